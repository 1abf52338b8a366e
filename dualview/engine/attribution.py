"""Per-token effects on log p(answer), from a loaded session (issue 18, method.md §8.4).

- :class:`AnswerScorer`: log p of a fixed answer (teacher forcing) with a kept set of visual tokens,
  one forward pass per call: the ``score`` and ``restored`` callables of
  :func:`dualview.attribution.add_back_search` and :func:`dualview.attribution.occlusion_effect`.
- :func:`first_order_effect`: every visual token's first-order effect from one backward pass.
- :func:`restore_answer`: what brings a changed answer back (the add-back search, shortlist ordered by
  the first-order effect), the one call the CLI's ``restore`` and the app make.
- :func:`evidence_tokens`: the visual tokens whose patches overlap ground-truth boxes (method.md §8.5).

Uses only public pieces: ``session.model``, ``session.adapter.layers``, ``session.check_layer``,
:mod:`dualview.engine.hooks` and a :class:`dualview.engine.adapters.Prepared` made by
``session.prepare(image, prompt).with_answer(answer_ids)`` (the answer's tokens appended after the prompt).
Visual-token indices (0..Nv-1) follow ``prepared.visual_positions``. Log probabilities are in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dualview.attribution import add_back_search
from dualview.engine import hooks
from dualview.engine.adapters import Prepared

__all__ = ["answer_terms", "AnswerScorer", "FirstOrderEffect", "first_order_effect", "Restoration", "restore_answer",
           "evidence_tokens"]


def answer_terms(logits: Tensor, answer_ids: list[int]) -> tuple[Tensor, bool]:
    """log p(answer) under teacher forcing, and whether greedy decoding would give that answer.

    Args:
        logits: ``[S', V]`` logits of one forward pass whose last ``A = len(answer_ids)`` positions
            are the answer's tokens (pruned passes drop only visual tokens, so they stay last);
            only the last A + 1 rows are read (see :func:`_answer_logits`).
        answer_ids: the A answer token ids (A ≥ 1).
    Returns:
        ``log p = Σ_t log softmax(logits[S'−A−1+t])[answer_ids[t]]`` as a 0-d float32 tensor (keeps
        its graph), and True when every one of those rows' argmax is the answer's token, i.e. greedy
        decoding from the same prompt reproduces the answer's A tokens.
    """
    count = len(answer_ids)
    if count < 1 or logits.shape[0] <= count:
        raise ValueError(f"need at least one answer token and a prompt before it, got {count} of {logits.shape[0]}")
    rows = torch.log_softmax(logits[-count - 1: -1].float(), dim=-1)  # [A, V]
    target = torch.tensor(answer_ids, dtype=torch.long, device=rows.device)
    logprob = rows.gather(1, target[:, None]).sum()
    return logprob, bool((rows.argmax(dim=-1) == target).all())


def _checked(session, prepared: Prepared, answer_ids: list[int], layer: int) -> tuple[list[int], int]:
    answer_ids = [int(t) for t in answer_ids]
    if not answer_ids or prepared.input_ids[-len(answer_ids):].tolist() != answer_ids:
        raise ValueError("prepared must be session.prepare(image, prompt).with_answer(answer_ids) with these answer ids")
    return answer_ids, session.check_layer(layer)


def _answer_logits(session, prepared: Prepared, count: int) -> Tensor:
    """``[count + 1, V]`` logits of the last ``count + 1`` positions, the rows that predict the answer
    (``logits_to_keep``: the language-model head runs on those rows only, not on all S)."""
    return session.model(**prepared.inputs, use_cache=False, logits_to_keep=count + 1).logits[0]


class AnswerScorer:
    """``score(kept)``: log p(answer | image, prompt) with only the kept visual tokens from ``layer`` on.

    Each call is one forward pass with the tokens physically dropped (as ``Session.logits``), so
    ``score(every visual token)`` is the unpruned model's log p exactly. The call also records
    whether the answer is the greedy one for that kept set, which :meth:`restored` returns.

    Args:
        session: a loaded :class:`dualview.engine.session.Session`.
        prepared: ``session.prepare(image, prompt).with_answer(answer_ids)``.
        answer_ids: the answer's token ids (e.g. the full model's ``Answer.token_ids``).
        layer: the pruning layer (decoder layer index; checked by ``session.check_layer``).
    """

    def __init__(self, session, prepared: Prepared, answer_ids: list[int], layer: int):
        self.answer_ids, self.layer = _checked(session, prepared, answer_ids, layer)
        self.session = session
        self.prepared = prepared
        self.calls = 0
        self._greedy: dict[tuple[int, ...], bool] = {}

    @torch.no_grad()
    def __call__(self, kept) -> float:
        """log p(answer) in nats for ``kept`` (visual-token indices), one forward pass."""
        kept = self.prepared.check_kept(kept)
        positions = self.prepared.keep_positions(kept)
        with hooks.prune_from(self.session.adapter.layers, self.layer, positions, self.prepared.length):
            logits = _answer_logits(self.session, self.prepared, len(self.answer_ids))
        self.calls += 1
        logprob, greedy = answer_terms(logits, self.answer_ids)
        self._greedy[tuple(sorted(kept.tolist()))] = greedy
        return float(logprob)

    def restored(self, kept, score: float | None = None) -> bool:
        """Whether the answer is the greedy one for ``kept``, as recorded when ``kept`` was scored
        (no forward pass; ``score`` is ignored). ValueError for a kept set never scored."""
        key = tuple(sorted(torch.as_tensor(kept, dtype=torch.long).reshape(-1).tolist()))
        if key not in self._greedy:
            raise ValueError("this kept set was never scored; call the scorer on it first")
        return self._greedy[key]


@dataclass
class FirstOrderEffect:
    """Each visual token's first-order effect on log p(answer) (method.md §8.4).

    Attributes:
        effect: ``[Nv]`` float32, nats: ``∂ log p / ∂g_i`` at ``g = 1`` for a gate ``g_i`` that scales
            token i's hidden state entering decoder layer ``layer``, which equals
            ``⟨∂ log p / ∂h_i, h_i⟩`` (gradient × input). It is the first-order estimate of
            ``log p(g = 1) − log p(g_i = 0)``: the drop when the token's hidden state at that layer
            is **zeroed**, not when the token is removed (a zeroed token still takes attention).
            Positive: the token supports the answer.
        logprob: log p(answer) of the unpruned model (the gate at 1 changes nothing).
        layer: the decoder layer whose input is gated.
    """

    effect: Tensor
    logprob: float
    layer: int

    LABEL = "first-order effect of zeroing the token's hidden state at the pruning layer (gradient × input)"


def first_order_effect(session, prepared: Prepared, answer_ids: list[int], layer: int) -> FirstOrderEffect:
    """Every visual token's first-order effect on log p(answer) from one forward and one backward pass.

    A forward pre-hook on decoder layer ``layer`` multiplies the visual tokens' hidden states by a
    gate ``g [Nv]`` set to 1 (exactly the unpruned pass); ``torch.autograd.grad`` of log p(answer)
    (:func:`answer_terms`) gives ``∂ log p / ∂g``. Layers below ``layer`` and the vision tower run
    without a graph; the backward pass costs about two forward passes of layers ``layer`` on.
    Not callable under ``torch.inference_mode()`` (its tensors cannot take part in autograd).

    Args:
        session: a loaded session; prepared: ``session.prepare(image, prompt).with_answer(answer_ids)``;
        answer_ids: the answer's token ids; layer: decoder layer index (``session.check_layer``).
    Returns:
        :class:`FirstOrderEffect`.
    """
    answer_ids, layer = _checked(session, prepared, answer_ids, layer)
    visual = prepared.visual_positions
    gates: list[Tensor] = []

    def gate_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if gates or hidden.shape[1] != prepared.length:
            return None
        torch.set_grad_enabled(True)  # from here on only; the enclosing no_grad() restores the mode
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        gate = torch.ones(visual.numel(), dtype=dtype, device=hidden.device, requires_grad=True)
        gates.append(gate)
        scale = torch.ones(hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
        scale = scale.index_put((visual.to(hidden.device),), gate.to(hidden.dtype))
        gated = hidden * scale[None, :, None]
        if args:
            return (gated,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": gated}

    handle = session.adapter.layers[layer].register_forward_pre_hook(gate_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            logprob, _ = answer_terms(_answer_logits(session, prepared, len(answer_ids)), answer_ids)
            (gradient,) = torch.autograd.grad(logprob, gates)
    finally:
        handle.remove()
    return FirstOrderEffect(effect=gradient.detach().float().cpu(), logprob=float(logprob.detach()), layer=layer)


@dataclass
class Restoration:
    """What brings a pruned answer back (method.md §8.4), from :func:`restore_answer`.

    Attributes:
        answer_ids: the answer scored (the full model's greedy answer), A token ids.
        full_logprob: log p(answer) with every visual token (nats).
        pruned_logprob: log p(answer) with the kept set.
        changed: whether the kept set changes the answer (some answer position's argmax differs).
        order: dropped visual-token indices added back, in order (empty when nothing changed).
        curve: log p(answer) with the kept set, then after each addition (``len(order) + 1`` values).
        calls: forward passes the search spent (its starting set included; 0 when nothing changed).
        restored: whether the answer is back after the additions (True when nothing changed).
        first_order: every visual token's first-order effect (:class:`FirstOrderEffect`; its
            ``LABEL`` says what it estimates), the prior that ordered the search's shortlists.
    """

    answer_ids: list[int]
    full_logprob: float
    pruned_logprob: float
    changed: bool
    order: list[int]
    curve: list[float]
    calls: int
    restored: bool
    first_order: FirstOrderEffect


def restore_answer(session, prepared: Prepared, kept, answer, layer: int, max_calls: int = 64,
                   width: int = 8) -> Restoration:
    """Which dropped visual tokens, added back, bring the full answer back (method.md §8.4).

    Scores ``answer`` with every visual token and with ``kept`` (two forward passes), computes the
    first-order effect of every visual token (one forward and one backward pass), and when the kept
    set changes the answer runs :func:`dualview.attribution.add_back_search` from ``kept`` over the
    dropped tokens, shortlists ordered by the first-order effect, until the answer is back or
    ``max_calls`` forward passes are spent.

    Args:
        session: a loaded session; prepared: ``session.prepare(image, prompt)`` (without an answer);
        kept: kept visual-token indices (0..Nv−1); answer: the answer to bring back (an ``Answer``,
        ids or text, :meth:`Session.answer_ids`), normally the full model's greedy answer; layer: the
        pruning layer; max_calls: forward passes the search may spend (≥ 1); width: shortlist size.
    Returns:
        :class:`Restoration`.
    """
    ids = session.answer_ids(answer)
    with_answer = prepared.with_answer(ids)
    scorer = AnswerScorer(session, with_answer, ids, layer)
    kept = prepared.check_kept(kept)
    every = torch.arange(prepared.num_visual)
    full_logprob, pruned_logprob = scorer(every), scorer(kept)
    changed = not scorer.restored(kept)
    first_order = first_order_effect(session, with_answer, ids, layer)
    if not changed:
        return Restoration(ids, full_logprob, pruned_logprob, False, [], [pruned_logprob], 0, True, first_order)
    dropped = every[~torch.isin(every, kept)]
    found = add_back_search(scorer, scorer.restored, kept, dropped, first_order.effect, width=width, max_calls=max_calls)
    return Restoration(ids, full_logprob, pruned_logprob, True, found.order.tolist(), found.curve.tolist(),
                       found.calls, found.restored, first_order)


def evidence_tokens(geometry, boxes) -> Tensor:
    """Visual tokens whose box overlaps one of ``boxes`` with positive area (method.md §8.5).

    Args:
        geometry: :class:`dualview.engine.geometry.Geometry` (``boxes [Nv, 4]`` in original-image pixels).
        boxes: ground-truth regions ``(x0, y0, x1, y1)`` in the same pixels (a list or ``[B, 4]``).
    Returns:
        ``[E]`` ascending LongTensor of visual-token indices (0..Nv−1); empty when ``boxes`` is.
    """
    regions = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    tokens = geometry.boxes.to(torch.float64)
    hits = torch.zeros(tokens.shape[0], dtype=torch.bool)
    for x0, y0, x1, y1 in regions.tolist():
        hits |= (tokens[:, 0] < x1) & (tokens[:, 2] > x0) & (tokens[:, 1] < y1) & (tokens[:, 3] > y0)
    return torch.nonzero(hits).reshape(-1)
