"""The analysis of one (model, image, prompt, layer): dual-form scores and kept-set measures.

The captured projections stay on the device they were made on (:func:`analysis_device`: the
model's GPU when it has one) and the heavy maths (magnitude, duplication blocks, the implicit
weight's Gram products, the attention split) runs there, float64 where exactness needs it; what
views, methods and JSON read (per-token scores, per-head measures) is returned as float32 / float64
on the CPU. On a CPU-only machine nothing moves. Untested on a GPU (none was available to this
project). S is the sequence length, Nv the number of visual tokens, H/Hkv
the query/KV heads, d the head dim. Visual-token indices (0..Nv-1) follow
:class:`dualview.engine.geometry.Geometry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from dualview import dual_form
from dualview.engine.adapters import Prepared
from dualview.errors import DualviewError
from dualview.queries import DEFAULT_QUERY, canonical_query, query_positions


def analysis_device(device: torch.device | str) -> torch.device:
    """Where an analysis of captures made on ``device`` runs: that device, except Apple's MPS
    (no float64, which the exact measures need), where it is the CPU."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


@dataclass
class Projections:
    """One decoder layer's attention inputs for the whole sequence.

    q_pre ``[H, S, d]``, k_pre ``[Hkv, S, d]`` (before RoPE), q_post/k_post (after RoPE),
    v ``[Hkv, S, dv]``. Computed from the layer's own input norm and q/k/v projections.
    """

    q_pre: Tensor
    k_pre: Tensor
    q_post: Tensor
    k_post: Tensor
    v: Tensor


def on_analysis_device(projections: Projections) -> Projections:
    """``projections`` with each tensor on its :func:`analysis_device` (a no-op on the CPU)."""
    return Projections(*(t.to(analysis_device(t.device)) for t in
                         (getattr(projections, f) for f in Projections.__dataclass_fields__)))


def attention_received(q_post: Tensor, k_post: Tensor) -> Tensor:
    """FastV's score: attention each token receives, mean over heads and query rows (causal softmax).

    Args: q_post ``[H, S, d]``, k_post ``[Hkv, S, d]`` of one layer. Returns ``[S]`` float32.
    """
    heads, length, dim = q_post.shape
    group = heads // k_post.shape[0]
    causal = torch.ones(length, length, dtype=torch.bool, device=q_post.device).tril()
    total = torch.zeros(length, dtype=torch.float32, device=q_post.device)
    for h in range(heads):  # one head at a time: S x S each
        logits = (q_post[h].float() @ k_post[h // group].float().T) / math.sqrt(dim)
        total += torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1).sum(dim=0)
    return total / (heads * length)


class Analysis:
    """Scores at the pruning layer and measures of kept sets, for one image and prompt.

    Attributes:
        model_name, image_hash, prompt, layer: what was analysed (hash and prompt from ``prepared``).
        prepared: inputs and positions (``prepared.visual_positions [Nv]``, ``text_positions [T]``).
        geometry: boxes of the visual tokens.
        projections: q/k/v of the analysis layer, all S tokens.
        magnitude: ``[Nv]`` information magnitude P_i (method.md §2), in (0, 1]: ``magnitude_for("text")``.
        kernel_logit: ``[Nv]`` mean over query heads of ``q_T · k_i / √d`` (pre-RoPE).
        value_norm: ``[Nv]`` mean over KV heads of ``‖v_i‖``.
        input_embeddings: ``[Nv, D]`` the visual tokens entering the language model.
        prompt_embeddings: ``[T, D]`` the instruction tokens entering the language model.
        attention_received: ``[Nv]`` FastV's score at layer ``fastv_layer`` (attention each visual
            token receives, mean over heads and query rows).

    An analysis made inside a pruned forward pass (``Session.answer(method=...)``) has only the
    analysis layer: the embeddings exist only when that layer is 0, FastV's score not at all.
    """

    def __init__(self, *, model_name: str, layer: int, num_layers: int,
                 prepared: Prepared, projections: Projections, embeddings: Tensor | None,
                 fastv_layer: int, fastv_received: Tensor | None):
        self.model_name = model_name
        self.image_hash = prepared.image_hash
        self.prompt = prepared.prompt
        self.layer = layer
        self.num_layers = num_layers
        self.prepared = prepared
        self.geometry = prepared.geometry
        self.projections = projections
        visual, text = prepared.visual_positions, prepared.text_positions
        p = projections
        self._magnitudes: dict[str, Tensor] = {}
        self._recent: dict = {}  # kind -> (kept set, result): the last kept set's measures, per kind
        self.magnitude = self.magnitude_for(DEFAULT_QUERY)
        self.kernel_logit = dual_form.kernel_logits(p.q_pre[:, text], p.k_pre[:, visual]).float().mean(dim=0).cpu()
        self.value_norm = dual_form.value_norms(p.v[:, visual]).float().mean(dim=0).cpu()
        self._embeddings = embeddings
        self.fastv_layer = fastv_layer
        self._received = fastv_received

    def query_rows(self, query: str) -> Tensor:
        """``[R]`` sequence positions of the query rows of a choice ``text | last | all | token:i``
        (:func:`dualview.queries.query_positions`, method.md §8.1); a one-sentence DualviewError for
        an unknown choice or a prompt token that does not exist."""
        prepared = self.prepared
        return query_positions(query, prepared.visual_positions, prepared.text_positions, prepared.length)

    def magnitude_for(self, query: str) -> Tensor:
        """``[Nv]`` information magnitude (method.md §2) with ``q_T`` the mean of the pre-RoPE queries
        of the rows ``query`` chooses (method.md §8.1), per head, then the mean over heads; in (0, 1].
        Cached per choice; ``magnitude_for("text")`` is :attr:`magnitude`."""
        query = canonical_query(query)
        if query not in self._magnitudes:
            p, visual = self.projections, self.prepared.visual_positions
            rows = self.query_rows(query)
            self._magnitudes[query] = dual_form.magnitude(p.q_pre[:, rows], p.k_pre[:, visual], p.v[:, visual]).float().cpu()
        return self._magnitudes[query]

    def _captured(self, value: Tensor | None, what: str) -> Tensor:
        if value is None:
            raise DualviewError(f"This analysis was made inside a pruned forward pass and has no {what}; "
                                "use session.analyze() and then answer(keep=...) for this method.")
        return value

    @property
    def input_embeddings(self) -> Tensor:
        return self._captured(self._embeddings, "input embeddings")[self.prepared.visual_positions]

    @property
    def prompt_embeddings(self) -> Tensor:
        return self._captured(self._embeddings, "input embeddings")[self.prepared.text_positions]

    @property
    def attention_received(self) -> Tensor:
        return self._captured(self._received, "FastV attention score")[self.prepared.visual_positions]

    @property
    def num_visual(self) -> int:
        return int(self.prepared.visual_positions.numel())

    @property
    def visual_keys(self) -> Tensor:
        """``[Hkv, Nv, d]`` post-RoPE keys of the visual tokens (the ones duplication uses)."""
        return self.projections.k_post[:, self.prepared.visual_positions]

    @property
    def visual_values(self) -> Tensor:
        """``[Hkv, Nv, dv]`` values of the visual tokens."""
        return self.projections.v[:, self.prepared.visual_positions]

    @cached_property
    def duplication_blocks(self) -> dual_form.DuplicationBlocks:
        """Blocks of the ``[Nv, Nv]`` duplication matrix on demand (what PC-MMR reads)."""
        return dual_form.DuplicationBlocks(self.visual_keys, self.visual_values)

    @cached_property
    def duplication(self) -> Tensor:
        """``[Nv, Nv]`` information duplication S̄² (method.md §3): Nv² numbers; the views use
        :meth:`duplication_row` and :attr:`token_duplication` instead."""
        return self.duplication_blocks.full().float().cpu()

    def duplication_row(self, token: int) -> Tensor:
        """``[Nv]`` row ``token`` of S̄²: which tokens duplicate visual token ``token`` (O(Nv))."""
        every = torch.arange(self.num_visual)
        return self.duplication_blocks.block(every, torch.tensor([int(token)]))[:, 0].float()

    @cached_property
    def token_duplication(self) -> Tensor:
        """``[Nv]`` mean of each token's 8 largest duplications with other tokens (blockwise)."""
        return dual_form.token_duplication(self.duplication_blocks).cpu()

    # -- kept sets ------------------------------------------------------------------------
    def sequence_keep(self, kept) -> Tensor:
        """``[S]`` bool: every non-visual token plus the kept visual tokens (what §6 calls S)."""
        mask = torch.zeros(self.prepared.length, dtype=torch.bool)
        mask[self.prepared.keep_positions(kept)] = True
        return mask

    SCOPES = ("sequence", "visual")
    """``sequence`` is method.md §6: W sums the updates of every token and S holds every non-visual
    token plus the kept visual ones. ``visual`` sums the visual tokens' updates only: the view to
    use when a few non-visual tokens (an attention sink such as BOS, with a large ‖k‖) dominate W
    and hide the differences between kept sets."""

    @cached_property
    def implicit_weight(self) -> dual_form.ImplicitWeight:
        """This layer's implicit weight with the visual tokens as candidates, built once; every
        kept-set measure below reads it (method.md §6)."""
        return dual_form.ImplicitWeight(self.projections.k_post, self.projections.v, self.prepared.visual_positions)

    def _last(self, kind, kept: Tensor, compute):
        """``compute()`` for the kept set ``kept`` (checked indices), reused while the same set is
        asked again (a page's views of one kept set read each measure several times)."""
        key = torch.sort(kept).values
        cached = self._recent.get(kind)
        if cached is None or not torch.equal(cached[0], key):
            self._recent[kind] = cached = (key, compute())
        return cached[1]

    def weight_measures(self, kept) -> dual_form.WeightMeasures:
        """Per-KV-head measures of kept visual tokens ``kept`` (indices 0..Nv−1 or a bool mask), on
        the analysis's device (the float helpers below bring them to the CPU)."""
        kept = self.prepared.check_kept(kept)
        return self._last("weight", kept, lambda: self.implicit_weight.measure(kept))

    def _scoped(self, kept, scope: str, sequence: str, visual: str) -> Tensor:
        if scope not in self.SCOPES:
            raise DualviewError(f"Unknown scope {scope!r} for the implicit weight; use one of {', '.join(self.SCOPES)}.")
        return getattr(self.weight_measures(kept), sequence if scope == "sequence" else visual).cpu()

    def weight_error_per_head(self, kept, scope: str = "sequence") -> Tensor:
        """``[Hkv]`` relative error ``‖W − W_S‖_F / ‖W‖_F`` per KV head (method.md §6)."""
        return self._scoped(kept, scope, "weight_error", "visual_weight_error")

    def weight_error(self, kept, scope: str = "sequence") -> float:
        """Relative error ``‖W − W_S‖_F / ‖W‖_F`` of the implicit weight, mean over KV heads."""
        return float(self.weight_error_per_head(kept, scope).mean())

    def effective_rank(self, kept, scope: str = "sequence") -> float:
        """Effective rank of ``W_S`` (mean over KV heads)."""
        return float(self._scoped(kept, scope, "effective_rank", "visual_effective_rank").mean())

    def stable_rank(self, kept, scope: str = "sequence") -> float:
        """Stable rank of ``W_S`` (mean over KV heads)."""
        return float(self._scoped(kept, scope, "stable_rank", "visual_stable_rank").mean())

    def attention_error(self, kept) -> float:
        """Relative attention-output error of the text queries at this layer (causal)."""
        return float(self.attention_split(kept, DEFAULT_QUERY).relative_error)

    @property
    def sequence_kv(self) -> tuple[Tensor, Tensor, Tensor]:
        """Post-RoPE keys ``[Hkv, S, d]``, values ``[Hkv, S, dv]`` of every sequence position, and
        the ``[Nv]`` positions of the visual tokens (what the greedy oracle reads)."""
        return self.projections.k_post, self.projections.v, self.prepared.visual_positions

    def measures(self, kept, query: str | None = None) -> dict:
        """Every measure of a kept set that the app, the CLI and the benches report (one
        :meth:`weight_measures` call and one attention pass).

        Args: kept: visual-token indices (0..Nv−1); query: with a query choice
            (``text | last | all | token:i``), also that choice's ``kept_mass`` (as
            :meth:`debug_measures` gives it), from the same attention pass when it is ``text``.
        Returns: ``weight_error``, ``effective_rank`` and ``stable_rank`` of W_S over the whole
        sequence (method.md §6), the error and effective rank over the visual tokens only
        (``visual_weight_error``, ``visual_effective_rank``), and the text queries'
        ``attention_error``; floats (means over KV heads).
        """
        m = self.weight_measures(kept)
        text = self.attention_split(kept, DEFAULT_QUERY)
        result = {"weight_error": float(m.weight_error.mean()), "effective_rank": float(m.effective_rank.mean()),
                  "stable_rank": float(m.stable_rank.mean()), "visual_weight_error": float(m.visual_weight_error.mean()),
                  "visual_effective_rank": float(m.visual_effective_rank.mean()),
                  "attention_error": float(text.relative_error)}
        if query is not None:
            split = text if canonical_query(query) == DEFAULT_QUERY else self.attention_split(kept, query)
            result["kept_mass"] = float(split.kept_mass_per_head.mean())
        return result

    # -- debugging a pruned answer (method.md §8, ours) -----------------------------------------
    def attention_split(self, kept, query: str = DEFAULT_QUERY) -> dual_form.AttentionSplit:
        """The attention-output change at this layer when only ``kept`` (visual-token indices) stay,
        for the query rows ``query`` chooses, split into the dropped updates and the normaliser
        (:func:`dualview.dual_form.attention_split`, method.md §8.2–8.3): post-RoPE rows at their own
        positions (causal), keys and values of the whole sequence, S = every non-visual token plus
        the kept visual ones. Tensors ``[H, R, dv]`` / ``[H, R]`` float64 on the analysis's device."""
        rows, p, kept = self.query_rows(query), self.projections, self.prepared.check_kept(kept)
        return self._last(("split", canonical_query(query)), kept, lambda: dual_form.attention_split(
            p.q_post[:, rows], p.k_post, p.v, self.sequence_keep(kept), rows))

    def debug_measures(self, kept, query: str = DEFAULT_QUERY) -> dict:
        """What a user debugging a pruned answer reads beside :meth:`measures` (method.md §8.2–8.3).

        Args: kept: visual-token indices (0..Nv−1); query: ``text | last | all | token:i``.
        Returns: ``query`` (canonical) and ``query_positions`` (sequence positions of its rows);
        ``kept_mass`` (share of the rows' attention the kept set held, in [0, 1]), ``dropped_part``
        (``‖η φ(q)(W − W_S)‖ / ‖A‖``), ``normaliser_part`` (``‖(1 − m) A_S‖ / ‖A‖``) and
        ``output_error`` (``‖A − A_S‖ / ‖A‖``): means over query heads, floats; the same four per
        query head under ``per_head`` (lists of H floats).
        """
        split = self.attention_split(kept, query)
        per_head = {"kept_mass": split.kept_mass_per_head, "dropped_part": split.dropped_error,
                    "normaliser_part": split.normaliser_error, "output_error": split.output_error}
        return {"query": canonical_query(query), "query_positions": self.query_rows(query).tolist(),
                **{name: float(values.mean()) for name, values in per_head.items()},
                "per_head": {name: values.tolist() for name, values in per_head.items()}}

    def attention_received_by(self, query: str = DEFAULT_QUERY) -> Tensor:
        """``[H, Nv]`` attention each visual token receives at this layer from the rows ``query``
        chooses, mean over those rows, per query head (``.mean(0)`` for the average over heads).

        Causal softmax over the whole sequence from the post-RoPE q/k of this layer
        (:func:`dualview.dual_form.attention_weights`): what an eager attention layer computes. With
        ``all`` at FastV's layer this is FastV's score; here it is always the analysis layer.
        Float32, each entry in [0, 1].
        """
        rows = self.query_rows(query)
        p = self.projections
        weights = dual_form.attention_weights(p.q_post[:, rows], p.k_post, rows)  # [H, R, S]
        return weights[:, :, self.prepared.visual_positions].mean(dim=1).float().cpu()

    def update_share(self) -> Tensor:
        """``[Hkv, Nv]`` each visual token's ``‖ΔW_i‖_F / ‖W‖_F`` at this layer, W summed over the
        whole sequence (method.md §1, §6; :meth:`dualview.dual_form.ImplicitWeight.update_share`); ``.mean(0)`` for
        the average over KV heads. Float32; a share near 1 means one update dominates W."""
        return self.implicit_weight.update_share().float().cpu()

    def token_numbers(self, token: int, query: str = DEFAULT_QUERY) -> dict:
        """The dual-form numbers of visual token ``token`` (0..Nv−1) that the teaching panel shows:
        its kernel logit (mean over query heads), ‖v‖ (mean over KV heads), magnitude with ``q_T``
        from the ``query`` rows, ``log ‖ΔW_i‖_F`` (mean over KV heads), duplication and its closest
        duplicate (``partner``); ``per_head``: one dict per query head with what recomputes the
        magnitude by hand (method.md §2, :func:`dualview.dual_form.magnitude_terms`): ``kv_head``,
        ``logit`` (q_T·k_i/√d), ``shift`` (the head's max over visual tokens of logit + log‖v‖),
        ``kernel`` = exp(logit − shift), ``value_norm`` (‖v_i‖ of that KV head) and
        ``product`` = kernel · value_norm; ``magnitude`` is the mean of the products."""
        row = self.duplication_row(token)
        partner_row = row.clone()
        partner_row[token] = -1.0
        partner = int(torch.argmax(partner_row)) if self.num_visual > 1 else token
        update = dual_form.update_log_norms(self.visual_keys[:, token:token + 1], self.visual_values[:, token:token + 1])
        p, visual = self.projections, self.prepared.visual_positions
        logits, norms, shifts = dual_form.magnitude_terms(p.q_pre[:, self.query_rows(canonical_query(query))],
                                                          p.k_pre[:, visual], p.v[:, visual])
        group = logits.shape[0] // p.k_pre.shape[0]
        per_head = []
        for h in range(logits.shape[0]):
            logit, shift, norm = float(logits[h, token]), float(shifts[h]), float(norms[h, token])
            kernel = math.exp(logit - shift)
            per_head.append({"head": h, "kv_head": h // group, "logit": logit, "shift": shift, "kernel": kernel,
                             "value_norm": norm, "product": kernel * norm})
        logit = float(logits[:, token].mean())
        return {
            "token": token,
            "query": canonical_query(query),
            "kernel_logit": logit,
            "kappa": math.exp(min(logit, 700.0)),
            "value_norm": float(self.value_norm[token]),
            "magnitude": float(self.magnitude_for(query)[token]),
            "per_head": per_head,
            "update_norm_log": float(update.mean()),
            "token_duplication": float(self.token_duplication[token]),
            "partner": partner,
            "partner_duplication": float(row[partner]),
        }
