"""Debugging a pruned answer, on kept sets and callables (issue 18, method.md §8.4 and §8.5).

- :func:`add_back_search`: which dropped visual tokens, added back one at a time, bring the full
  answer back; greedy on the exact gain in a score (log p of the full answer), with a shortlist
  ordered by a cheap prior so that each step costs a fixed number of scoring calls.
- :func:`occlusion_effect`: what removing each of a few kept tokens costs in the score.
- :func:`evidence_recall`: the share of ground-truth evidence tokens a kept set holds.

Token indices are visual-token indices (0..Nv-1, :class:`dualview.engine.geometry.Geometry`
order), the same space as a kept set. Nothing here knows about models: the model is behind the
callables (see :mod:`dualview.engine.attribution` for the ones built from a session).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["AddBack", "add_back_search", "occlusion_effect", "evidence_recall"]


def _indices(tokens, name: str) -> Tensor:
    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    if tokens.numel() and int(tokens.min()) < 0:
        raise ValueError(f"{name} must be non-negative token indices, got {tokens.tolist()}")
    if tokens.unique().numel() != tokens.numel():
        raise ValueError(f"{name} holds a token twice: {tokens.tolist()}")
    return tokens


@dataclass
class AddBack:
    """What :func:`add_back_search` found.

    Attributes:
        order: ``[K]`` LongTensor, the dropped tokens added back, in the order they were added.
        curve: ``[K + 1]`` float64, the score of the starting kept set, then after each addition
            (units of the score: nats of log p for the engine's scorer).
        calls: how many times ``score`` was called, the starting set included.
        restored: whether ``restored`` held for the final kept set (start ∪ order).
    """

    order: Tensor
    curve: Tensor
    calls: int
    restored: bool


def add_back_search(
    score: Callable[[Tensor], float],
    restored: Callable[[Tensor, float], bool],
    kept: Sequence[int] | Tensor,
    dropped: Sequence[int] | Tensor,
    prior: Tensor,
    width: int = 8,
    max_calls: int = 64,
) -> AddBack:
    """Greedy add-back: repeatedly add the dropped token whose return raises ``score`` most.

    Step t takes the ``min(width, |remaining|, calls left)`` remaining dropped tokens with the largest
    ``prior`` (ties: lower index), scores the current kept set plus each of them exactly, and adds the
    one with the largest score (ties: the larger prior). It stops when ``restored`` holds, when every
    dropped token is back, or when no call is left.

    Cost: 1 call for the starting set, then at most ``width`` calls per token added, so K additions
    cost at most ``1 + K · width`` calls, and never more than ``max_calls``. ``width = 1`` follows
    the prior's order (one call per token, for the curve); ``width ≥ |dropped|`` is the exhaustive
    greedy step (``|D| + (|D| − 1) + …`` calls: too many at thousands of dropped tokens, hence the
    shortlist). A token outside the shortlist can only be found once the prior ranks it high enough,
    so a poor prior costs additions, not correctness of the scores.

    Args:
        score: ``score(kept) -> float`` for a ``[M]`` ascending LongTensor of kept token indices,
            e.g. log p(full answer) with that kept set (:class:`dualview.engine.attribution.AnswerScorer`).
            Higher is better; NaN raises ValueError.
        restored: ``restored(kept, score) -> bool``, whether the full answer is back for that kept set
            and its score; called once per committed set, never for shortlist candidates, so it
            should not cost a forward pass (a threshold on the score, or what the scorer recorded).
        kept: the starting kept set (token indices).
        dropped: the tokens that may be added back (disjoint from ``kept``).
        prior: ``[Nv]`` float, indexed by token; larger means more likely to help (e.g. the first-
            order effect of :func:`dualview.engine.attribution.first_order_effect`). Not read for
            anything but the shortlist order.
        width: shortlist size per step (≥ 1); max_calls: budget of calls to ``score`` (≥ 1).
    Returns:
        :class:`AddBack`.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an integer ≥ 1, got {width!r}")
    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1:
        raise ValueError(f"max_calls must be an integer ≥ 1, got {max_calls!r}")
    current = _indices(kept, "kept")
    remaining = _indices(dropped, "dropped").sort().values
    if torch.isin(remaining, current).any():
        raise ValueError("kept and dropped share tokens")
    prior = torch.as_tensor(prior, dtype=torch.float64).reshape(-1)
    if remaining.numel() and int(remaining.max()) >= prior.numel():
        raise ValueError(f"prior has {prior.numel()} entries but token {int(remaining.max())} is dropped")
    if torch.isnan(prior[remaining]).any():
        raise ValueError("prior is NaN for a dropped token")
    # Shortlists are prefixes of the remaining tokens in prior order (stable: lower index first).
    remaining = remaining[torch.sort(prior[remaining], descending=True, stable=True).indices].tolist()
    calls = 0

    def evaluate(tokens: Tensor) -> float:
        nonlocal calls
        calls += 1
        value = float(score(tokens))
        if math.isnan(value):
            raise ValueError(f"score returned NaN for the kept set {tokens.tolist()}")
        return value

    current = current.sort().values
    curve = [evaluate(current)]
    order: list[int] = []
    is_back = bool(restored(current, curve[-1]))
    while not is_back and remaining and calls < max_calls:
        shortlist = remaining[: min(width, max_calls - calls)]
        scores = [evaluate(torch.cat([current, torch.tensor([token])]).sort().values) for token in shortlist]
        best = max(range(len(shortlist)), key=lambda i: (scores[i], -i))
        token = shortlist[best]
        order.append(token)
        curve.append(scores[best])
        remaining.remove(token)
        current = torch.cat([current, torch.tensor([token])]).sort().values
        is_back = bool(restored(current, curve[-1]))
    return AddBack(order=torch.tensor(order, dtype=torch.long), curve=torch.tensor(curve, dtype=torch.float64),
                   calls=calls, restored=is_back)


def occlusion_effect(score: Callable[[Tensor], float], kept: Sequence[int] | Tensor,
                     tokens: Sequence[int] | Tensor) -> Tensor:
    """Occlusion: ``score(S) − score(S \\ {i})`` for each token i, the drop when i alone is removed.

    Args:
        score: ``score(kept) -> float`` as in :func:`add_back_search` (one forward pass per call for
            the engine's scorer); called ``1 + len(tokens)`` times, with ascending index tensors.
        kept: the kept set S the tokens are removed from (e.g. every visual token).
        tokens: ``[K]`` tokens of S to remove one at a time.
    Returns:
        ``[K]`` float64, in the score's units; positive: the token supports the answer.
    """
    kept = _indices(kept, "kept").sort().values
    tokens = _indices(tokens, "tokens")
    if not torch.isin(tokens, kept).all():
        raise ValueError("every token to occlude must be in the kept set")
    base = float(score(kept))
    return torch.tensor([base - float(score(kept[kept != token])) for token in tokens.tolist()], dtype=torch.float64)


def evidence_recall(kept: Sequence[int] | Tensor, evidence: Sequence[int] | Tensor) -> float | None:
    """Share of the evidence tokens that the kept set holds: ``|S ∩ E| / |E|`` (method.md §8.5).

    Args:
        kept: kept visual-token indices S (no duplicates).
        evidence: indices E of the tokens whose patches overlap the ground-truth region (no duplicates).
    Returns:
        A float in [0, 1]: 1 when every evidence token is kept, 0 when none is; None when E is empty
        (no ground truth: there is nothing to recall, and None cannot be averaged by mistake).
    """
    kept = _indices(kept, "kept")
    evidence = _indices(evidence, "evidence")
    if evidence.numel() == 0:
        return None
    return float(torch.isin(evidence, kept).sum()) / evidence.numel()
