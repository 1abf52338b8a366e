"""A loaded model: analyse, answer, and score answers with pruned visual tokens.

Pruning follows method.md §5: layers below ``layer`` see every token and keep full caches;
from ``layer`` on only the non-visual tokens and the kept visual tokens exist (physically
dropped), with their original position ids (1-D RoPE, or Qwen's 3-D M-RoPE). ``layer=0`` prunes
before the language model.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import nullcontext
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor

from dualview.engine import hooks
from dualview.engine.adapters import Adapter, Prepared
from dualview.engine.analysis import Analysis, Projections, attention_received
from dualview.errors import DualviewError

FASTV_K = 2
"""FastV prunes after layer K (K = 2 in its paper) using attention at layer K − 1."""


def default_layer(num_layers: int) -> int:
    """method.md §5: layer 4, or ``max(1, L // 4)`` for models with fewer than 8 decoder layers."""
    return 4 if num_layers >= 8 else max(1, num_layers // 4)


def as_image(image) -> Image.Image:
    """A PIL image, a path, bytes or an ``[H, W(, 3)]`` array as an RGB PIL image, decoded by the
    app's own validator (:func:`dualview.validation.load_image`: formats, modes, bomb limit, downscale)."""
    from dualview.validation import load_image

    return load_image(image)


def image_hash(image: Image.Image) -> str:
    """Content hash of an RGB image (size and pixels)."""
    digest = hashlib.sha256(f"{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Answer:
    """A greedy answer.

    Attributes:
        text: decoded answer (special tokens removed).
        token_ids: generated token ids (the prompt excluded).
        prefill_seconds: time of the first forward pass (the whole prompt).
        total_seconds: time of the whole generation.
        prompt_tokens: prompt length the first layers saw; ``kept_tokens``: length from the
            pruning layer on.
        layer: the pruning layer; ``kept``: kept visual-token indices (None = all).
        selection_seconds: time of a selection fused into the prefill (0 when none ran).
    """

    text: str
    token_ids: list[int]
    prefill_seconds: float
    total_seconds: float
    prompt_tokens: int
    kept_tokens: int
    layer: int
    kept: list[int] | None = field(default=None)
    selection_seconds: float = 0.0


class Session:
    """A loaded VLM with its processor and adapter. Create with :func:`dualview.load`.

    Attributes:
        name: what was loaded (``builtin``, a path, or a model id); ``family``: adapter family;
        num_layers: decoder layers L; ``default_layer``: method.md §5 pruning layer;
        ``max_length``: the language model's ``max_position_embeddings`` (None when unstated).
    """

    def __init__(self, name: str, model, processor, adapter: Adapter, cache_size: int = 8):
        self.name = name
        self.model = model
        self.processor = processor
        self.adapter = adapter
        self.family = adapter.family
        self.max_length = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        self.num_layers = len(adapter.layers)
        self.default_layer = default_layer(self.num_layers)
        self.fastv_k = min(FASTV_K, self.num_layers - 1)
        self._analyses: OrderedDict[tuple, Analysis] = OrderedDict()
        self._cache_size = cache_size

    def __repr__(self) -> str:
        return f"Session({self.name!r}, family={self.family!r}, layers={self.num_layers})"

    # -- helpers --------------------------------------------------------------------------
    def check_layer(self, layer: int | None) -> int:
        if layer is None:
            return self.default_layer
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise DualviewError(f"Layer {layer!r} does not exist: this model's decoder layers are "
                                f"0 to {self.num_layers - 1}.")
        return layer

    def prepare(self, image, prompt: str, answer_ids: list[int] | None = None) -> Prepared:
        if not isinstance(prompt, str):
            raise DualviewError("The prompt must be text.")
        prepared = self.adapter.prepare(as_image(image), prompt, answer_ids)
        if self.max_length and prepared.length > self.max_length:
            raise DualviewError(f"The image and prompt make {prepared.length} tokens, more than this model's limit "
                                f"of {self.max_length}; shorten the prompt or use a smaller image.")
        return prepared

    def _project(self, layer: int, captured: hooks.LayerInput) -> Projections:
        """q/k/v of decoder layer ``layer`` from its captured input, via its own modules."""
        module = self.adapter.layers[layer]
        attention = module.self_attn
        x = module.input_layernorm(captured.hidden[None])  # [1, S, D]
        length, dim = x.shape[1], attention.head_dim
        q = attention.q_proj(x).view(1, length, -1, dim).transpose(1, 2)
        k = attention.k_proj(x).view(1, length, -1, dim).transpose(1, 2)
        v = attention.v_proj(x).view(1, length, -1, dim).transpose(1, 2)
        if getattr(attention, "q_norm", None) is not None:  # Gemma 3, Qwen3: per-head RMS norm before RoPE
            q, k = attention.q_norm(q), attention.k_norm(k)
        q_post, k_post = self.adapter.apply_rope(q, k, captured.cos[None], captured.sin[None])
        return Projections(*(t[0].float() for t in (q, k, q_post, k_post, v)))

    # -- analysis -------------------------------------------------------------------------
    @torch.no_grad()
    def analyze(self, image, prompt: str, layer: int | None = None) -> Analysis:
        """Scores at decoder layer ``layer`` (default method.md §5) for (image, prompt), cached.

        One forward pass that stops at the deepest layer needed (the analysis layer, or FastV's
        scoring layer K − 1), capturing the language model's input embeddings, FastV's layer and
        the analysis layer's input.
        """
        layer = self.check_layer(layer)
        image = as_image(image)
        key = (image_hash(image), prompt, layer)
        if key in self._analyses:
            self._analyses.move_to_end(key)
            return self._analyses[key]
        prepared = self.prepare(image, prompt)
        fastv_layer = self.fastv_k - 1
        store: dict[int, hooks.LayerInput] = {}
        with hooks.capture_layer_inputs(self.adapter.layers, {0, fastv_layer, layer}, store):
            try:
                self.model(**prepared.inputs, use_cache=False)
            except hooks.StopForward:
                pass
        fastv = self._project(fastv_layer, store[fastv_layer])
        received = attention_received(fastv.q_post, fastv.k_post).cpu()
        projections = self._project(layer, store[layer])
        projections = Projections(*(getattr(projections, f).cpu() for f in Projections.__dataclass_fields__))
        analysis = Analysis(
            model_name=self.name, image_hash=key[0], prompt=prompt, layer=layer, num_layers=self.num_layers,
            prepared=prepared, projections=projections, embeddings=store[0].hidden.float().cpu(),
            fastv_layer=fastv_layer, fastv_received=received,
        )
        self._analyses[key] = analysis
        while len(self._analyses) > self._cache_size:
            self._analyses.popitem(last=False)
        return analysis

    # -- answering ------------------------------------------------------------------------
    def _pruning(self, prepared: Prepared, keep, layer: int):
        if keep is None:
            return None, nullcontext()
        positions = prepared.keep_positions(keep)
        return positions, hooks.prune_from(self.adapter.layers, layer, positions, prepared.length)

    def _fused_selection(self, prepared: Prepared, layer: int, method: str, budget, params: dict, record: dict):
        """A function of layer ``layer``'s input that analyses it, selects with ``method`` and
        returns the positions to keep (see :func:`dualview.engine.hooks.prune_from`)."""
        from dualview.methods import get_method

        chosen = get_method(method)
        cuda = self.model.device.type == "cuda"

        def select(captured: hooks.LayerInput) -> Tensor:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            projections = self._project(layer, captured)
            projections = Projections(*(getattr(projections, f).cpu() for f in Projections.__dataclass_fields__))
            analysis = Analysis(
                model_name=self.name, image_hash="", prompt="", layer=layer, num_layers=self.num_layers,
                prepared=prepared, projections=projections,
                embeddings=captured.hidden.float().cpu() if layer == 0 else None,
                fastv_layer=self.fastv_k - 1, fastv_received=None,
            )
            if chosen.prune_layer(analysis) != layer:
                raise DualviewError(f"Method '{method}' prunes at layer {chosen.prune_layer(analysis)}, not {layer}; "
                                    "pass that layer, or use analyze() and then answer(keep=...).")
            selection = analysis.select(method, budget, **params)
            record["kept"] = selection.kept.tolist()
            record["seconds"] = time.perf_counter() - start
            return prepared.keep_positions(selection.kept)

        return select

    @torch.no_grad()
    def answer(self, image, prompt: str, keep=None, layer: int | None = None, max_new_tokens: int = 16,
               method: str | None = None, budget: int | float | None = None, **params) -> Answer:
        """Greedy answer keeping visual tokens ``keep`` (indices, None = all) from ``layer`` on.

        With ``method`` and ``budget`` instead of ``keep``, the selection runs inside the prefill
        pass at ``layer`` (scores from that layer's own q/k/v, then pruning), as a deployment would
        do; ``params`` go to the method. Its time is ``Answer.selection_seconds``.
        """
        layer = self.check_layer(layer)
        prepared = self.prepare(image, prompt)
        record: dict = {}
        if method is not None:
            if keep is not None or budget is None:
                raise DualviewError("Give either keep=... or method=... with budget=..., not both.")
            keep_fn = self._fused_selection(prepared, layer, method, budget, params, record)
            pruning = hooks.prune_from(self.adapter.layers, layer, keep_fn, prepared.length)
        else:
            _, pruning = self._pruning(prepared, keep, layer)
            if keep is not None:
                record["kept"] = torch.as_tensor(keep).reshape(-1).tolist()
        marks: list[float] = []
        cuda = self.model.device.type == "cuda"

        def after_forward(module, args, output):
            if cuda:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

        handle = self.model.register_forward_hook(after_forward)
        try:
            with pruning:
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                output = self.model.generate(
                    **prepared.inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                    temperature=None, top_p=None, top_k=None,
                )
                end = time.perf_counter()
        finally:
            handle.remove()
        new_ids = output[0, prepared.length:].tolist()
        kept = record.get("kept")
        dropped = 0 if kept is None else prepared.visual_positions.numel() - len(kept)
        return Answer(
            text=self.adapter.tokenizer.decode(new_ids, skip_special_tokens=True).strip(),
            token_ids=new_ids,
            prefill_seconds=marks[0] - start,
            total_seconds=end - start,
            prompt_tokens=prepared.length,
            kept_tokens=prepared.length - dropped,
            layer=layer,
            kept=kept,
            selection_seconds=record.get("seconds", 0.0),
        )

    @torch.no_grad()
    def logits(self, image, prompt: str, keep=None, layer: int | None = None,
               answer_ids: list[int] | None = None) -> tuple[Tensor, Tensor]:
        """One forward pass; returns ``logits [S', V]`` (float32, CPU) and the ``[S']`` original
        positions they belong to (all S positions when ``keep`` is None)."""
        layer = self.check_layer(layer)
        prepared = self.prepare(image, prompt, answer_ids)
        positions, pruning = self._pruning(prepared, keep, layer)
        with pruning:
            logits = self.model(**prepared.inputs, use_cache=False).logits[0].float().cpu()
        return logits, (torch.arange(prepared.length) if positions is None else positions)

    def answer_logprob(self, image, prompt: str, answer_text: str, keep=None, layer: int | None = None) -> float:
        """log p(answer_text | image, prompt) under teacher forcing, with the given kept set."""
        answer_ids = self.adapter.tokenizer(answer_text, add_special_tokens=False)["input_ids"]
        if not answer_ids:
            raise DualviewError("The answer to score is empty; give the answer text.")
        logits, positions = self.logits(image, prompt, keep, layer, answer_ids)
        total = positions.numel()  # the answer tokens are text: always kept, at the end
        start = total - len(answer_ids)
        predicting = torch.log_softmax(logits[start - 1: total - 1], dim=-1)
        return float(predicting[torch.arange(len(answer_ids)), torch.tensor(answer_ids)].sum())
