"""Per-family knowledge: where the language model is, how inputs are built, which tokens are what.

An adapter turns (image, prompt) into model inputs plus the bookkeeping dualview needs:
the positions of the visual tokens (those it may prune), of the text tokens whose queries form
``q_T`` (method.md §2), and the geometry of the visual tokens. Families: ``llava`` (LLaVA-1.5),
``llava_next``, ``llava_onevision``, ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``, ``idefics3``,
``smolvlm``, ``gemma3``, ``internvl``; and ``generic`` (:class:`GenericAdapter`) for any other
image-text-to-text class whose visual tokens are placeholder ids in ``input_ids``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from torch import Tensor

from dualview.engine import geometry as geo
from dualview.engine import hooks
from dualview.engine.guards import normalize_keep, refuse_special_text
from dualview.errors import DualviewError

# config.json "architectures" entry -> adapter family
ARCHITECTURES = {
    "LlavaForConditionalGeneration": "llava",
    "LlavaNextForConditionalGeneration": "llava_next",
    "LlavaOnevisionForConditionalGeneration": "llava_onevision",
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
    "Idefics3ForConditionalGeneration": "idefics3",
    "SmolVLMForConditionalGeneration": "smolvlm",
    "Gemma3ForConditionalGeneration": "gemma3",
    "InternVLForConditionalGeneration": "internvl",
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
        generation_step: the model's own ``_update_model_kwargs_for_generation``, which
            :meth:`with_answer` uses to extend the per-token inputs (see :func:`append_generated`).
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
    generation_step: Callable | None = None

    def __repr__(self) -> str:
        return (f"Prepared(length={self.length}, visual={self.num_visual}, text={self.text_positions.numel()}, "
                f"prompt={self.prompt!r}, answer_length={self.answer_length})")

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
        if self.generation_step is None:
            raise ValueError("this prepared input was made without its model's generation step")
        answer_ids = list(answer_ids)
        inputs = append_generated(self.generation_step, self.inputs, answer_ids)
        return dataclasses.replace(self, inputs=inputs, input_ids=inputs["input_ids"][0].cpu(),
                                   answer_length=len(answer_ids))

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


def append_generated(generation_step: Callable, inputs: dict, token_ids: list[int]) -> dict:
    """``inputs`` with ``token_ids`` appended as generated tokens, the other per-token inputs extended
    by ``generation_step``, the model's own ``_update_model_kwargs_for_generation`` (what
    ``generate`` does after each step): attention mask ones, ``mm_token_type_ids`` zeros,
    ``token_type_ids`` as the class says (Gemma 3: text; PaliGemma: its causal suffix, not its
    bidirectional prefix)."""
    if not token_ids:
        return dict(inputs)
    extended = {key: value for key, value in inputs.items() if key != "input_ids"}
    extended = generation_step({}, extended, num_new_tokens=len(token_ids))
    ids = torch.tensor([token_ids], dtype=inputs["input_ids"].dtype, device=inputs["input_ids"].device)
    return {**extended, "input_ids": torch.cat([inputs["input_ids"], ids], dim=1)}


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
        token = getattr(config, "image_token_id", None)
        token = getattr(config, "image_token_index", None) if token is None else token
        if token is None:
            raise DualviewError(f"{type(model).__name__} states no image placeholder token id in its config, so "
                                "dualview cannot find its visual tokens.")
        self.image_token_id = int(token)

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

    def prompt_span(self, prompt: str, input_ids: list[int]) -> tuple[int, int]:
        """[start, end) of the prompt's tokens in the processor's ``input_ids``.

        The rendered text is tokenized with and without the prompt; the tokens both share at the
        start and at the end are scaffolding (chat template, image placeholder), the rest is the
        prompt. What follows the shared start (the prompt and the closing scaffolding) is found as
        the last match in ``input_ids``, so a processor may expand the image placeholder before it
        and add tokens after it (PaliGemma's newline). Empty when it is not found.
        """
        with_prompt = self.tokenizer(self.render(prompt))["input_ids"]
        without = self.tokenizer(self.render(""))["input_ids"]
        prefix = _common_prefix(with_prompt, without)
        suffix = _common_prefix(with_prompt[::-1], without[::-1])
        suffix = min(suffix, len(with_prompt) - prefix, len(without) - prefix)
        tail = with_prompt[prefix:]
        for start in range(len(input_ids) - len(tail), -1, -1):
            if input_ids[start:start + len(tail)] == tail:
                return start, start + len(tail) - suffix
        return 0, 0

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
        start, end = self.prompt_span(prompt, input_ids.tolist())
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
                        text_positions=text, geometry=geometry, image=image, prompt=prompt,
                        generation_step=self.model._update_model_kwargs_for_generation)

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


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL: Qwen's merged patch grid (patch 16). DeepStack adds one vision feature per visual
    token to the hidden states after each of the first ``len(deepstack_visual_indexes)`` decoder
    layers (``language_model._deepstack_process``). Once pruning has dropped tokens, the features of
    the dropped ones are dropped too: the adapter wraps that method (on this model instance) to
    take only the kept rows, read from :func:`dualview.engine.hooks.active_keep`."""

    family = "qwen3_vl"

    def __init__(self, model, processor):
        super().__init__(model, processor)
        language_model = self.language_model
        add = language_model._deepstack_process

        def deepstack_process(hidden_states, visual_pos_masks, visual_embeds):
            if hidden_states.shape[1] != visual_pos_masks.shape[1]:  # pruned: [1, S'] of [1, S]
                keep = hooks.active_keep().to(visual_pos_masks.device)
                rank = visual_pos_masks[0].cumsum(0) - 1  # each visual position's row in visual_embeds
                visual_embeds = visual_embeds[rank[keep][visual_pos_masks[0, keep]]]
                visual_pos_masks = visual_pos_masks[:, keep]
            return add(hidden_states, visual_pos_masks, visual_embeds)

        language_model._deepstack_process = deepstack_process


class Idefics3Adapter(Adapter):
    """Idefics3 / SmolVLM: the image resized to a grid of square tiles (row-major, each preceded by a
    ``<row_r_col_c>`` marker that is not an image slot) plus the global image last; the connector's
    pixel shuffle merges ``scale × scale`` patches into one token, in raster order per tile."""

    family = "idefics3"

    @property
    def language_model(self):
        return self.model.model.text_model

    def tile_rows(self, input_ids: Tensor) -> int:
        """Rows of tiles: the distinct ``<row_r_col_1>`` markers in ``input_ids`` (0 when not tiled)."""
        present = set(input_ids.tolist())
        ids = self.tokenizer.convert_tokens_to_ids([f"<row_{r}_col_1>" for r in range(1, 100)])
        return sum(i in present for i in ids if i is not None and i != self.tokenizer.unk_token_id)

    def geometry(self, image_size, inputs):
        config = self.model.config
        side = config.vision_config.image_size // config.vision_config.patch_size // config.scale_factor
        tiles = inputs["pixel_values"].shape[1] - 1  # [1, tiles + global, 3, H, W]
        rows = self.tile_rows(inputs["input_ids"][0])
        grid = (rows, tiles // rows) if rows else None
        regions = geo.even_tiles(image_size, grid) if grid else None
        return geo.tiled(image_size, (side, side), grid, regions, "global image", overview_first=False)


class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM: Idefics3's layout. Its processor's chat template method needs the video processor
    (torchvision), so the prompt is rendered by the tokenizer's template (same text)."""

    family = "smolvlm"

    def render(self, prompt):
        template = self.processor.chat_template or self.tokenizer.chat_template
        if not template:
            return super().render(prompt)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                                  tokenize=False)


class Gemma3Adapter(Adapter):
    """Gemma 3: the whole image (896 px, no crop) as ``mm_tokens_per_image`` pooled soft tokens in a
    square raster, then, with pan-and-scan on (``do_pan_and_scan`` in the saved image processor
    config), the same for each crop (crops from the image processor's own ``pan_and_scan``). Image
    tokens attend to each other both ways and 5 of every 6 decoder layers use a sliding window: the
    model's own masks, which pruning slices (:mod:`dualview.engine.hooks`)."""

    family = "gemma3"

    PAN_AND_SCAN = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                    "pan_and_scan_min_ratio_to_activate")

    def pan_and_scan(self) -> dict:
        """The pan-and-scan settings of the saved image processor config, each falling back to the
        processor's default when unset. The processor's call defaults (pan-and-scan off) would
        otherwise override the saved config, so they are passed explicitly on every call."""
        image_processor = self.processor.image_processor
        defaults = self.processor.images_kwargs
        return {key: defaults[key] if getattr(image_processor, key, None) is None else getattr(image_processor, key)
                for key in self.PAN_AND_SCAN}

    def processor_inputs(self, image, text):
        return dict(self.processor(images=[image], text=[text], return_tensors="pt", **self.pan_and_scan()))

    def crop_regions(self, image_size) -> list[tuple[float, float, float, float]]:
        """Pan-and-scan crops of an image of ``image_size`` as (x0, y0, x1, y1), raster order: the
        image processor's own ``pan_and_scan`` applied to a map of pixel coordinates."""
        import numpy as np

        settings = self.pan_and_scan()
        if not settings.pop("do_pan_and_scan"):
            return []
        width, height = image_size
        ys, xs = np.meshgrid(np.arange(height, dtype=np.int32), np.arange(width, dtype=np.int32), indexing="ij")
        crops = self.processor.image_processor.pan_and_scan(np.stack([xs, ys]), *settings.values())
        return [(float(c[0].min()), float(c[1].min()), float(c[0].max()) + 1, float(c[1].max()) + 1) for c in crops]

    def geometry(self, image_size, inputs):
        side = math.isqrt(self.model.config.mm_tokens_per_image)
        regions = self.crop_regions(image_size)
        grid = (len({r[1] for r in regions}), len({r[0] for r in regions})) if regions else None
        return geo.tiled(image_size, (side, side), grid, regions or None, "original", overview_first=True,
                         tile_name="crop")


class InternVLAdapter(Adapter):
    """InternVL: the image resized to the tile grid whose aspect ratio is closest (1 to
    ``max_patches`` tiles, the image processor's own ``get_optimal_tiled_canvas``), tiles row-major,
    then a thumbnail of the whole image when there is more than one tile; pixel shuffle 0.5 merges
    2 × 2 patches into one token, raster order per tile."""

    family = "internvl"

    def geometry(self, image_size, inputs):
        config = self.model.config
        image_processor = self.processor.image_processor
        tile, patch = (v if isinstance(v, int) else v[0] for v in (config.vision_config.image_size,
                                                                   config.vision_config.patch_size))
        side = round(tile // patch * config.downsample_ratio)
        width, height = image_size
        canvas = sys.modules[type(image_processor).__module__].get_optimal_tiled_canvas
        cols, rows = canvas((height, width), (tile, tile), image_processor.min_patches, image_processor.max_patches)
        if rows * cols == 1:
            return geo.tiled(image_size, (side, side), None, None, "image", overview_first=False)
        return geo.tiled(image_size, (side, side), (rows, cols), geo.even_tiles(image_size, (rows, cols)),
                         "thumbnail", overview_first=False)


class GenericAdapter(Adapter):
    """Any other image-text-to-text class whose visual tokens are ``config.image_token_id`` (or
    ``image_token_index``) placeholders in ``input_ids``, with its language model at
    ``model.model.language_model`` (or ``text_model``).

    Geometry: Qwen-style when the processor states ``image_grid_thw`` (merged patch grid); one
    square grid over the whole image when the token count is the vision tower's
    (image size / patch size)² (a processor that resizes the whole image, e.g. PaliGemma);
    otherwise a strip in token order, marked not spatial.
    """

    family = "generic"

    def __init__(self, model, processor):
        super().__init__(model, processor)
        inner = getattr(model, "model", None)
        found = getattr(inner, "language_model", None) or getattr(inner, "text_model", None)
        if found is None or not hasattr(found, "layers"):
            raise DualviewError(f"dualview cannot find the decoder layers inside {type(model).__name__} "
                                "(looked for model.language_model.layers and model.text_model.layers).")
        self._language_model = found

    @property
    def language_model(self):
        return self._language_model

    def processor_inputs(self, image, text):
        inputs = super().processor_inputs(image, text)
        inputs.pop("labels", None)  # PaliGemma's processor adds training labels; a forward pass needs none
        return inputs

    def geometry(self, image_size, inputs):
        vision = getattr(self.model.config, "vision_config", None)
        count = int((inputs["input_ids"][0] == self.image_token_id).sum())
        if "image_grid_thw" in inputs and hasattr(vision, "spatial_merge_size"):
            _, rows, cols = inputs["image_grid_thw"][0].tolist()
            return geo.merged_patch_grid(image_size, (rows, cols), vision.spatial_merge_size)
        size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
        if isinstance(size, int) and isinstance(patch, int) and (size // patch) ** 2 == count:
            region = geo.seen_region(image_size, self.processor.image_processor)
            return geo.fixed_grid(image_size, size // patch, region)
        return geo.strip(image_size, count, f"dualview does not know how {type(self.model).__name__} lays its "
                                            "visual tokens over the image, so the map shows them in token order.")


ADAPTERS = {cls.family: cls for cls in
            (LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, QwenVLAdapter, Qwen25VLAdapter, Qwen3VLAdapter,
             Idefics3Adapter, SmolVLMAdapter, Gemma3Adapter, InternVLAdapter, GenericAdapter)}
