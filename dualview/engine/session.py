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
from dualview.engine.analysis import Analysis, Projections, attention_received, on_analysis_device
from dualview.engine.attribution import answer_terms
from dualview.engine.guards import refuse_special_text
from dualview.errors import DualviewError
from dualview.images import load_image
from dualview.methods import Method

FASTV_K = 2
"""FastV prunes after layer K (K = 2 in its paper) using attention at layer K − 1."""


def default_layer(num_layers: int) -> int:
    """method.md §5: layer 4, or ``max(1, L // 4)`` for models with fewer than 8 decoder layers."""
    return 4 if num_layers >= 8 else max(1, num_layers // 4)


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
        step_logprobs: log p of each generated token given the ones before (nats), from the
            generation's own logits.
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
    step_logprobs: list[float] = field(default_factory=list)

    def logprob_of(self, ids: list[int]) -> float | None:
        """log p of the answer ``ids`` under the kept set this answer was generated with, read from
        the generation itself when its first tokens are ``ids`` (greedy decoding computed exactly
        those teacher-forced terms); None otherwise (then score with ``Session.answer_logprob``)."""
        if list(self.token_ids[:len(ids)]) != list(ids) or len(self.step_logprobs) < len(ids):
            return None
        return float(sum(self.step_logprobs[:len(ids)]))


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

    def prepare(self, image, prompt: str) -> Prepared:
        """The model inputs of (image, prompt), made once and handed to every later call.

        Args:
            image: a decoded RGB PIL image (a path, bytes or an array is decoded by
                :func:`dualview.images.load_image`: same formats, limits and downscaling as the app).
            prompt: the user's question (the chat template and image placeholder are added here).
        Returns:
            :class:`Prepared`: ``inputs`` for the model, ``input_ids [S]``, ``visual_positions [Nv]``,
            ``text_positions [T]`` (sequence positions), the token ``geometry``, the image and its hash.
        Raises:
            DualviewError: the prompt is not text, or image and prompt exceed the model's length.
        """
        if not isinstance(prompt, str):
            raise DualviewError("The prompt must be text.")
        if not prompt.strip():
            raise DualviewError("The prompt is empty; type a question about the image.")
        hooks.use_supported_attention(self.model)
        image = load_image(image)
        prepared = self.adapter.prepare(image, prompt)
        self._check_length(prepared.length)
        prepared.image_hash = image_hash(image)
        return prepared

    def _check_length(self, length: int) -> None:
        if self.max_length and length > self.max_length:
            raise DualviewError(f"The image and prompt make {length} tokens, more than this model's limit "
                                f"of {self.max_length}; shorten the prompt or use a smaller image.")

    @staticmethod
    def _prepared(prepared) -> Prepared:
        if not isinstance(prepared, Prepared):
            raise DualviewError(f"Pass the result of session.prepare(image, prompt), not {type(prepared).__name__}.")
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
    def analyze(self, prepared: Prepared, layer: int | None = None) -> Analysis:
        """Scores at decoder layer ``layer`` (default method.md §5) of a prepared input, cached.

        One forward pass that stops at the deepest layer needed (the analysis layer, or FastV's
        scoring layer K − 1), capturing the language model's input embeddings, FastV's layer and
        the analysis layer's input. Cached by (image hash, prompt, layer): the same image and
        prompt prepared again reuse the analysis.

        Args:
            prepared: from :meth:`prepare`; layer: decoder layer 0..L−1 or None (the default).
        Returns:
            :class:`Analysis` (tensors on CPU, float32; visual-token indices 0..Nv−1).
        """
        prepared = self._prepared(prepared)
        layer = self.check_layer(layer)
        key = (prepared.image_hash, prepared.prompt, layer)
        if key in self._analyses:
            self._analyses.move_to_end(key)
            return self._analyses[key]
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
        projections = on_analysis_device(projections)
        analysis = Analysis(
            model_name=self.name, layer=layer, num_layers=self.num_layers,
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

    def _fused_selection(self, prepared: Prepared, layer: int, method: Method, budget, params: dict, record: dict):
        """A function of layer ``layer``'s input that analyses it, selects with ``method`` and
        returns the positions to keep (see :func:`dualview.engine.hooks.prune_from`)."""
        cuda = self.model.device.type == "cuda"

        def select(captured: hooks.LayerInput) -> Tensor:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            projections = self._project(layer, captured)
            projections = on_analysis_device(projections)
            analysis = Analysis(
                model_name=self.name, layer=layer, num_layers=self.num_layers,
                prepared=prepared, projections=projections,
                embeddings=captured.hidden.float().cpu() if layer == 0 else None,
                fastv_layer=self.fastv_k - 1, fastv_received=None,
            )
            selection = method.select(analysis, budget, **params)
            record["kept"] = selection.kept.tolist()
            record["seconds"] = time.perf_counter() - start
            return prepared.keep_positions(selection.kept)

        return select

    def _check_fusable(self, method: Method, layer: int) -> None:
        """A method can select inside the pruned forward pass only from what that layer provides."""
        where = method.prune_layer(_LayerOnly(layer, self.fastv_k - 1))
        if where != layer or "fastv_attention" in method.needs or ("embeddings" in method.needs and layer != 0):
            raise DualviewError(f"Method '{method.name}' prunes at layer {where} from what the analysis captures, so it "
                                f"cannot select inside the pruned pass at layer {layer}; use analyze() and then "
                                "answer(keep=...).")

    @torch.no_grad()
    def answer(self, prepared: Prepared, keep=None, layer: int | None = None, max_new_tokens: int = 16,
               method: Method | None = None, budget=None, params: dict | None = None) -> Answer:
        """Greedy answer keeping visual tokens ``keep`` from ``layer`` on (None: all tokens).

        With ``method`` (a registered :class:`dualview.methods.Method`) and ``budget`` instead of
        ``keep``, the selection runs inside the prefill pass at ``layer`` (scores from that layer's
        own q/k/v, then pruning), as a deployment would do; ``params`` go to the method. Its time
        is ``Answer.selection_seconds``.

        Args:
            prepared: from :meth:`prepare`; keep: visual-token indices (0..Nv−1) or None;
            layer: first pruned decoder layer (None: the default); max_new_tokens: ≥ 1.
        Returns:
            :class:`Answer` with the text, the generated ids and the prefill / total times.
        """
        prepared = self._prepared(prepared)
        layer = self.check_layer(layer)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise DualviewError(f"max_new_tokens must be a whole number of at least 1, got {max_new_tokens!r}.")
        record: dict = {}
        if method is not None:
            if keep is not None or budget is None:
                raise DualviewError("Give either keep=... or method=... with budget=..., not both.")
            self._check_fusable(method, layer)
            keep_fn = self._fused_selection(prepared, layer, method, budget, params or {}, record)
            pruning = hooks.prune_from(self.adapter.layers, layer, keep_fn, prepared.length)
        else:
            _, pruning = self._pruning(prepared, keep, layer)
            if keep is not None:
                record["kept"] = prepared.check_kept(keep).tolist()
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
                    temperature=None, top_p=None, top_k=None, return_dict_in_generate=True, output_logits=True,
                )
                end = time.perf_counter()
        finally:
            handle.remove()
        new_ids = output.sequences[0, prepared.length:].tolist()
        steps = [float(torch.log_softmax(step[0].float(), dim=-1)[token]) for step, token in zip(output.logits, new_ids)]
        kept = record.get("kept")
        dropped = 0 if kept is None else prepared.num_visual - len(kept)
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
            step_logprobs=steps,
        )

    @torch.no_grad()
    def logits(self, prepared: Prepared, keep=None, layer: int | None = None, last: int = 0) -> tuple[Tensor, Tensor]:
        """One forward pass over a prepared input (with its appended answer, if any).

        ``last`` > 0 runs the language-model head on the last ``last`` positions only
        (``logits_to_keep``), as :class:`dualview.engine.attribution.AnswerScorer` does, so a
        score taken either way is the same number to the bit (a head run on fewer rows may round
        differently).

        Returns:
            ``logits [S', V]`` (float32, CPU) and the ``[S']`` original sequence positions they
            belong to (all S positions when ``keep`` is None); with ``last``, those of the last rows.
        """
        prepared = self._prepared(prepared)
        layer = self.check_layer(layer)
        self._check_length(prepared.length)
        positions, pruning = self._pruning(prepared, keep, layer)
        with pruning:
            logits = self.model(**prepared.inputs, use_cache=False, logits_to_keep=last).logits[0].float().cpu()
        positions = torch.arange(prepared.length) if positions is None else positions
        return logits, positions[-last:] if last else positions

    def answer_ids(self, answer) -> list[int]:
        """The token ids of an answer to score: an :class:`Answer` (its generated ids up to and
        with the end-of-sequence id that ended it, so an empty answer is scored too), a list of
        ids, or text whose tokenization
        round-trips (decodes back to the same text); a one-sentence DualviewError otherwise."""
        tokenizer = self.adapter.tokenizer
        if isinstance(answer, Answer):
            stops = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
            eos = self.model.generation_config.eos_token_id
            stops |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
            ids = []
            for token in answer.token_ids:
                ids.append(int(token))
                if token in stops:
                    break
        elif isinstance(answer, str):
            refuse_special_text(self.processor, answer, "answer to score")
            ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            decoded = tokenizer.decode(ids, skip_special_tokens=False)
            if decoded.strip() != answer.strip():
                raise DualviewError(f"The answer {answer!r} does not survive this model's tokenizer (it reads back "
                                    f"as {decoded!r}); score the generated answer's token ids instead.")
        else:
            vocabulary = self.model.get_output_embeddings().weight.shape[0]
            try:
                ids = [int(i) for i in answer]
            except (TypeError, ValueError):
                raise DualviewError("An answer to score is an Answer, its text or a list of token ids.") from None
            if any(not 0 <= i < vocabulary for i in ids) or any(float(i) != i for i in answer):
                raise DualviewError(f"Answer token ids must be whole numbers from 0 to {vocabulary - 1}.")
        if not ids:
            raise DualviewError("The answer to score is empty; give the answer text or its token ids.")
        return ids

    def answer_logprob(self, prepared: Prepared, answer, keep=None, layer: int | None = None) -> float:
        """log p(answer | image, prompt) under teacher forcing, with the given kept set.

        Args:
            prepared: from :meth:`prepare` (without an answer); answer: see :meth:`answer_ids`
                (an :class:`Answer` is scored from its own generated ids, so the score is exact
                even when the decoded text would not re-tokenize to the same ids);
            keep: kept visual-token indices or None; layer: first pruned decoder layer.
        Returns:
            the sum over answer tokens of log-softmax of the logit of each next token (nats).
        """
        ids = self.answer_ids(answer)
        logits, _ = self.logits(self._prepared(prepared).with_answer(ids), keep, layer, last=len(ids) + 1)
        return float(answer_terms(logits, ids)[0])  # the answer tokens are text: always kept, at the end


class _LayerOnly:
    """The layer facts a method's ``layer`` rule reads, for a selection inside the pruned pass."""

    def __init__(self, layer: int, fastv_layer: int):
        self.layer = layer
        self.fastv_layer = fastv_layer
