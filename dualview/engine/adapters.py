"""Per-family knowledge: where the language model is, how inputs are built, which tokens are what.

An adapter turns (image, prompt) into model inputs plus the bookkeeping dualview needs:
the positions of the visual tokens (those it may prune), of the text tokens whose queries form
``q_T`` (method.md §2), and the geometry of the visual tokens. Families: ``llava`` (LLaVA-1.5),
``llava_next``, ``llava_onevision``, ``qwen2_vl``, ``qwen2_5_vl``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from dualview.engine import geometry as geo
from dualview.engine.guards import normalize_keep, refuse_special_text
from dualview.errors import DualviewError

# config.json "architectures" entry -> adapter family
ARCHITECTURES = {
    "LlavaForConditionalGeneration": "llava",
    "LlavaNextForConditionalGeneration": "llava_next",
    "LlavaOnevisionForConditionalGeneration": "llava_onevision",
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
}


@dataclass
class Prepared:
    """Model inputs for one (image, prompt), batch size 1, and what each position is.

    Attributes:
        inputs: keyword arguments for the model (``input_ids [1, S]``, pixel values, ...), on the
            model's input device.
        input_ids: ``[S]`` LongTensor on CPU.
        visual_positions: ``[Nv]`` sequence positions of the visual tokens (prunable), ascending.
        text_positions: ``[T]`` positions of the instruction tokens whose mean query is ``q_T``.
        geometry: boxes of the visual tokens (same order as ``visual_positions``).
        image: the decoded RGB image the inputs were made from; prompt: the user's prompt text;
        image_hash: content hash of ``image`` (size and pixels), set by ``Session.prepare``.
        answer_length: answer tokens appended for teacher forcing (:meth:`with_answer`), 0 if none.
    """

    inputs: dict
    input_ids: Tensor
    visual_positions: Tensor
    text_positions: Tensor
    geometry: geo.Geometry
    image: Image.Image | None = None
    prompt: str = ""
    image_hash: str = ""
    answer_length: int = 0

    @property
    def num_visual(self) -> int:
        """Nv, the number of visual tokens."""
        return int(self.visual_positions.numel())

    def with_answer(self, answer_ids: list[int]) -> "Prepared":
        """The same inputs with ``answer_ids`` appended after the generation prompt (teacher
        forcing), without running the processor again. Only a prepared input without an answer
        can take one."""
        if self.answer_length:
            raise ValueError("this prepared input already ends with an answer")
        extra = torch.tensor([list(answer_ids)], dtype=self.input_ids.dtype)
        inputs = dict(self.inputs)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], extra.to(inputs["input_ids"].device)], dim=1)
        for key, fill in (("attention_mask", 1), ("mm_token_type_ids", 0)):
            if key in inputs:
                pad = torch.full((1, extra.shape[1]), fill, dtype=inputs[key].dtype, device=inputs[key].device)
                inputs[key] = torch.cat([inputs[key], pad], dim=1)
        return dataclasses.replace(self, inputs=inputs, input_ids=inputs["input_ids"][0].cpu(),
                                   answer_length=extra.shape[1])

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    def check_kept(self, kept) -> Tensor:
        """``kept`` (visual-token indices or a boolean mask, see :func:`guards.normalize_keep`) as a
        ``[M]`` LongTensor of visual-token indices, or a DualviewError."""
        return normalize_keep(kept, self.visual_positions.numel())

    def keep_positions(self, kept_visual) -> Tensor:
        """``[S']`` ascending positions that survive when only ``kept_visual`` (indices into the
        visual tokens, checked) are kept: every non-visual position plus the kept visual ones."""
        keep = torch.ones(self.length, dtype=torch.bool)
        keep[self.visual_positions] = False
        keep[self.visual_positions[self.check_kept(kept_visual)]] = True
        return torch.nonzero(keep).reshape(-1)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class Adapter:
    """Base adapter: LLaVA-style models whose language model is ``model.model.language_model``."""

    family = ""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        config = model.config
        self.image_token_id = int(getattr(config, "image_token_id", None) or config.image_token_index)

    # -- the language model ---------------------------------------------------------------
    @property
    def language_model(self):
        return self.model.model.language_model

    @property
    def layers(self):
        """The decoder layers, in order."""
        return self.language_model.layers

    def apply_rope(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """The attention module's own RoPE function (q ``[B, H, S, d]``, k ``[B, Hkv, S, d]``)."""
        attention = self.layers[0].self_attn
        return sys.modules[type(attention).__module__].apply_rotary_pos_emb(q, k, cos, sin)

    # -- inputs ---------------------------------------------------------------------------
    def image_placeholder(self) -> str:
        """Text that stands for the image in a prompt without a chat template."""
        return self.processor.image_token

    def render(self, prompt: str) -> str:
        """The full prompt text: the chat template (image, then the prompt, generation prompt
        added) if the processor has one, else the image placeholder followed by the prompt."""
        template = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if template:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(
                messages, chat_template=template, add_generation_prompt=True, tokenize=False
            )
        return self.image_placeholder() + prompt

    def prompt_span(self, prompt: str, expanded_length: int) -> tuple[int, int]:
        """[start, end) of the prompt's tokens in the expanded sequence of ``expanded_length``.

        The rendered text is tokenized with and without the prompt; the tokens both share at the
        start and at the end are scaffolding (chat template, image placeholder), the rest is the
        prompt. The image comes before the prompt, so offsets from the end carry over to the
        sequence with the image placeholder expanded.
        """
        with_prompt = self.tokenizer(self.render(prompt))["input_ids"]
        without = self.tokenizer(self.render(""))["input_ids"]
        prefix = _common_prefix(with_prompt, without)
        suffix = _common_prefix(with_prompt[::-1], without[::-1])
        suffix = min(suffix, len(with_prompt) - prefix, len(without) - prefix)
        start = expanded_length - (len(with_prompt) - prefix)
        return start, expanded_length - suffix

    def processor_inputs(self, image: Image.Image, text: str) -> dict:
        return dict(self.processor(images=[image], text=[text], return_tensors="pt"))

    def prepare(self, image: Image.Image, prompt: str) -> Prepared:
        """Inputs and bookkeeping for (image, prompt): the processor runs once, here. Refuses, before
        any processor or model work, a prompt holding special-token text and an image outside the
        processor's limits (:meth:`check_image`)."""
        refuse_special_text(self.processor, prompt)
        self.check_image(image.size)
        inputs = self.processor_inputs(image, self.render(prompt))
        input_ids = inputs["input_ids"][0]
        slots = torch.nonzero(input_ids == self.image_token_id).reshape(-1)
        if slots.numel() == 0:
            raise DualviewError("The processor produced no image tokens for this input, so there is "
                                "nothing to prune; check that the model's processor matches the model.")
        geometry = self.geometry(image.size, inputs)
        if geometry.is_visual.numel() != slots.numel():
            raise DualviewError(
                f"dualview's {self.family} geometry expects {geometry.is_visual.numel()} image tokens but the "
                f"processor made {slots.numel()}; this model's image settings are not supported yet."
            )
        visual = slots[geometry.is_visual]
        start, end = self.prompt_span(prompt, len(input_ids))
        if end > start:
            text = torch.arange(start, end)
        else:  # no instruction tokens: every non-image token (method.md §2)
            is_text = torch.ones(len(input_ids), dtype=torch.bool)
            is_text[slots] = False
            text = torch.nonzero(is_text).reshape(-1)
        device = self.model.device
        inputs = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return Prepared(inputs=inputs, input_ids=inputs["input_ids"][0].cpu(), visual_positions=visual,
                        text_positions=text, geometry=geometry, image=image, prompt=prompt)

    def check_image(self, image_size: tuple[int, int]) -> None:
        """Raise DualviewError if the family's processor refuses an image of ``image_size``
        (width, height); by default it accepts every size."""

    def geometry(self, image_size: tuple[int, int], inputs: dict) -> geo.Geometry:
        raise NotImplementedError


class LlavaAdapter(Adapter):
    """LLaVA-1.5: one fixed grid of (image size / patch size)² tokens."""

    family = "llava"

    def geometry(self, image_size, inputs):
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        slots = int((inputs["input_ids"][0] == self.image_token_id).sum())
        region = geo.seen_region(image_size, self.processor.image_processor)
        return geo.fixed_grid(image_size, side, region, leading_structural=slots - side * side)


class LlavaNextAdapter(Adapter):
    """LLaVA-NeXT AnyRes: base view, then the unpadded crop grid with one newline per row."""

    family = "llava_next"

    def packed_shape(self, unpadded: tuple[int, int], side: int) -> tuple[int, int]:
        return unpadded

    def geometry(self, image_size, inputs):
        config = self.model.config
        modeling = sys.modules[type(self.model.model).__module__]
        side = config.vision_config.image_size // config.vision_config.patch_size
        height_width = inputs["image_sizes"][0].tolist()
        crop_grid = modeling.get_anyres_image_grid_shape(
            height_width, config.image_grid_pinpoints, config.vision_config.image_size)
        canvas = torch.empty(1, crop_grid[0] * side, crop_grid[1] * side)
        unpadded = tuple(modeling.unpad_image(canvas, height_width).shape[1:])
        return geo.anyres(image_size, tuple(crop_grid), side, unpadded, self.packed_shape(unpadded, side),
                          newline=getattr(self.model.model, "image_newline", None) is not None)


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: AnyRes like LLaVA-NeXT, crop grid down-sampled to at most ``anyres_max_N`` crops."""

    family = "llava_onevision"

    def packed_shape(self, unpadded, side):
        # Same rule as LlavaOnevisionModel.pack_image_features (bilinear down-sampling).
        max_crops = int(self.model.config.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = (unpadded[0] * unpadded[1] / (max_crops * side**2)) ** 0.5
        if ratio > 1.1:
            return int(unpadded[0] // ratio), int(unpadded[1] // ratio)
        return unpadded


class QwenVLAdapter(Adapter):
    """Qwen2-VL / Qwen2.5-VL: a dynamic patch grid, 2 × 2 patches merged into one token, 3-D M-RoPE."""

    family = "qwen2_vl"
    MAX_ASPECT_RATIO = 200
    """``smart_resize`` of the Qwen2-VL image processors refuses a longer/shorter side ratio above this."""

    def check_image(self, image_size):
        width, height = image_size
        if max(width, height) / min(width, height) > self.MAX_ASPECT_RATIO:
            raise DualviewError(f"The image is {width}x{height} pixels, an aspect ratio of "
                                f"{max(width, height) / min(width, height):.4g}:1, but {self.family}'s processor "
                                f"accepts at most {self.MAX_ASPECT_RATIO}:1; crop or pad the image.")

    def image_placeholder(self):
        return "<|vision_start|>" + self.processor.image_token + "<|vision_end|>"

    def geometry(self, image_size, inputs):
        _, rows, cols = inputs["image_grid_thw"][0].tolist()
        return geo.merged_patch_grid(image_size, (rows, cols), self.model.config.vision_config.spatial_merge_size)


class Qwen25VLAdapter(QwenVLAdapter):
    family = "qwen2_5_vl"


ADAPTERS = {cls.family: cls for cls in
            (LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, QwenVLAdapter, Qwen25VLAdapter)}
