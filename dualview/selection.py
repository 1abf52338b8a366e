"""Selection rules on tensors: PC-MMR (method.md §4) and the rules the baselines need.

Every rule is a pure function of tensors returning a :class:`Selection`. N is the number of
candidate (visual) tokens; indices refer to them. A budget is a token count (int ≥ 1) or a
fraction of N (float in (0, 1]), resolved by :func:`dualview.budget.resolve_budget`. Ties are broken towards the
lower index everywhere, so every rule is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Union

import torch
from torch import Tensor

from dualview.budget import resolve_budget

__all__ = [
    "Selection",
    "DuplicationSource",
    "pc_mmr",
    "mmr",
    "top_k",
    "random_subset",
    "uniform_grid",
    "max_min_diversity",
    "dpp_map",
    "apply_overrides",
]


class _Blocks(Protocol):
    def block(self, rows: Tensor, cols: Tensor) -> Tensor: ...

    def row_max(self, rows: Tensor, cols: Tensor) -> Tensor: ...


DuplicationSource = Union[Tensor, _Blocks]
"""A full ``[N, N]`` duplication matrix, or an object whose ``block(rows, cols)`` returns
``[len(rows), len(cols)]`` of it and ``row_max(rows, cols)`` that block's row maxima ``[len(rows)]``
(:class:`dualview.dual_form.DuplicationBlocks`)."""


@dataclass
class Selection:
    """The kept set and how it was chosen.

    Attributes:
        kept: ``[M]`` LongTensor of token indices in the order they were selected.
        chunks: one LongTensor per round, the tokens taken in that round (their concatenation is
            ``kept``); rules without rounds have a single chunk.
        scores: per round, ``[N]`` float64 scores the round chose from, NaN for tokens already
            kept (PC-MMR: penalised magnitudes; MMR: the MMR objective). Empty when not traced.
        floored: per round, how many remaining tokens that round's penalty pushed to the floor.
    """

    kept: Tensor
    chunks: list[Tensor]
    scores: list[Tensor] = field(default_factory=list)
    floored: list[int] = field(default_factory=list)

    def mask(self, n: int) -> Tensor:
        """The kept set as a bool mask ``[n]``."""
        mask = torch.zeros(n, dtype=torch.bool)
        mask[self.kept] = True
        return mask

    def round_of(self, n: int) -> Tensor:
        """``[n]`` LongTensor: the round (0-based) that kept each token, −1 for dropped ones."""
        rounds = torch.full((n,), -1, dtype=torch.long)
        for r, chunk in enumerate(self.chunks):
            rounds[chunk] = r
        return rounds


def _block_reader(duplication: DuplicationSource):
    if isinstance(duplication, Tensor):
        return lambda rows, cols: duplication[rows][:, cols]
    return duplication.block


def _row_max_reader(duplication: DuplicationSource):
    """``(rows, cols) -> max_{j ∈ cols} S̄²[rows, j]`` ``[R]``."""
    if isinstance(duplication, Tensor):
        return lambda rows, cols: duplication[rows][:, cols].amax(dim=1)
    return duplication.row_max


def _descending(scores: Tensor) -> Tensor:
    """Indices sorting ``scores`` from largest to smallest, ties by lower index."""
    return torch.sort(scores, descending=True, stable=True).indices


def pc_mmr(
    magnitude: Tensor,
    duplication: DuplicationSource,
    budget: int | float,
    *,
    b0: int,
    growth: int,
    lam: float,
    floor: float = 0.01,
    trace: bool = True,
) -> Selection:
    """Progressive Chunked MMR, Algorithm 1 of the IWP paper exactly (method.md §4).

    Each round takes the ``min(b, M − |C|)`` remaining tokens with the largest current score
    (ties: lower index), then multiplies every remaining score by
    ``max(floor, 1 − lam · max_{j ∈ new chunk} S̄²_ij)`` (penalties accumulate, against the newest
    chunk only), and grows ``b ← b · growth``.

    Args:
        magnitude: ``[N]`` information magnitudes P.
        duplication: ``[N, N]`` S̄² or a block source of it; only ``|U| × chunk`` blocks are read.
        budget: count or fraction of N.
        b0: first chunk size (integer ≥ 1); growth: chunk growth factor (integer ≥ 1);
            lam: penalty λ (≥ 0); the paper's values are declared once, in the ``iwp`` method's
            registry entry (:mod:`dualview.methods.iwp`); floor: the smallest penalty factor
            (0.01 in the paper, not a user parameter).
        trace: record per-round scores (for the animation).
    """
    if int(b0) != b0 or int(growth) != growth or b0 < 1 or growth < 1 or not lam >= 0 or not 0 <= floor <= 1:
        raise ValueError(f"PC-MMR needs b0 ≥ 1, g ≥ 1, λ ≥ 0 and a floor in [0, 1]; got b0={b0}, g={growth}, λ={lam}, floor={floor}")
    n = magnitude.numel()
    total = resolve_budget(budget, n)
    row_max = _row_max_reader(duplication)
    scores = magnitude.detach().reshape(-1).to(torch.float64).clone()
    remaining = torch.ones(n, dtype=torch.bool)
    result = Selection(kept=torch.zeros(0, dtype=torch.long), chunks=[])
    taken, chunk_size, growth = 0, int(b0), int(growth)
    while taken < total:
        candidates = remaining.nonzero().squeeze(1)
        if trace:
            result.scores.append(scores.masked_fill(~remaining, float("nan")))
        chunk = candidates[_descending(scores[candidates])[: min(chunk_size, total - taken)]]
        result.chunks.append(chunk)
        remaining[chunk] = False
        taken += chunk.numel()
        rest = remaining.nonzero().squeeze(1)
        floored = 0
        if rest.numel() and taken < total:
            factor = 1.0 - lam * row_max(rest, chunk).to(torch.float64)
            floored = int((factor <= floor).sum())
            scores[rest] *= factor.clamp_min(floor)
        result.floored.append(floored)
        chunk_size *= growth
    result.kept = torch.cat(result.chunks)
    return result


def mmr(
    relevance: Tensor, duplication: DuplicationSource, budget: int | float, *, trade: float, trace: bool = True
) -> Selection:
    """Classic MMR (Carbonell & Goldstein 1998), one token per step.

    Step t keeps ``argmax_i trade · r_i − (1 − trade) · max_{j ∈ C} S̄²_ij`` over the remaining
    tokens, with ``r = relevance / max(relevance)`` (**choice**: both terms in [0, 1]) and the max
    over an empty C taken as 0.

    Args:
        relevance: ``[N]`` (IWP passes the magnitude); duplication: ``[N, N]`` or a block source.
        trade: λ' in [0, 1] (its default is declared in the ``mmr`` method's registry entry);
            trace: record the objective before every step.
    """
    if not 0.0 <= trade <= 1.0:
        raise ValueError(f"MMR's trade-off must lie in [0, 1], got {trade}")
    n = relevance.numel()
    total = resolve_budget(budget, n)
    read_block = _block_reader(duplication)
    relevance = relevance.detach().reshape(-1).to(torch.float64)
    relevance = relevance / relevance.max().clamp_min(torch.finfo(torch.float64).tiny)
    every = torch.arange(n)
    max_dup = torch.zeros(n, dtype=torch.float64)
    remaining = torch.ones(n, dtype=torch.bool)
    result = Selection(kept=torch.zeros(0, dtype=torch.long), chunks=[])
    for _ in range(total):
        objective = (trade * relevance - (1.0 - trade) * max_dup).masked_fill(~remaining, float("nan"))
        if trace:
            result.scores.append(objective)
        best = int(torch.argmax(objective.nan_to_num(float("-inf"))))
        result.chunks.append(torch.tensor([best]))
        remaining[best] = False
        max_dup = torch.maximum(max_dup, read_block(every, torch.tensor([best])).to(torch.float64)[:, 0])
        result.floored.append(0)
    result.kept = torch.cat(result.chunks)
    return result


def top_k(scores: Tensor, budget: int | float) -> Selection:
    """The ``budget`` tokens with the largest ``scores [N]`` (ties: lower index), best first."""
    kept = _descending(scores.detach().reshape(-1))[: resolve_budget(budget, scores.numel())]
    return Selection(kept=kept, chunks=[kept])


def random_subset(n: int, budget: int | float, seed: int) -> Selection:
    """A uniformly random kept set of ``budget`` out of ``n`` tokens, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    kept = torch.randperm(n, generator=generator)[: resolve_budget(budget, n)]
    return Selection(kept=kept, chunks=[kept])


def uniform_grid(rows: int, cols: int, budget: int | float) -> Selection:
    """Evenly spread tokens of a ``rows × cols`` grid (raster-order indices).

    Picks the centres of an ``r × c`` sub-grid with about the grid's aspect ratio and
    ``r · c ≥ M``, then drops the surplus evenly along the raster order to keep exactly M.
    """
    n = rows * cols
    total = resolve_budget(budget, n)
    sub_rows = max(1, min(rows, round(math.sqrt(total * rows / cols))))
    sub_cols = min(cols, math.ceil(total / sub_rows))
    sub_rows = max(sub_rows, math.ceil(total / sub_cols))
    row_idx = ((torch.arange(sub_rows) + 0.5) * rows / sub_rows).long()
    col_idx = ((torch.arange(sub_cols) + 0.5) * cols / sub_cols).long()
    grid = (row_idx[:, None] * cols + col_idx[None, :]).reshape(-1)
    pick = torch.linspace(0, grid.numel() - 1, total).round().long()
    kept = grid[pick]
    return Selection(kept=kept, chunks=[kept])


def _unit_rows(features: Tensor) -> Tensor:
    return torch.nn.functional.normalize(features.detach().to(torch.float64), dim=-1)


def max_min_diversity(features: Tensor, budget: int | float) -> Selection:
    """DivPrune's greedy max–min diversity on cosine distance ``1 − cos(x_i, x_j)``.

    As in DivPrune's reference code: the first token is the one whose nearest other token is
    farthest; then repeatedly the token whose minimum distance to the kept set is largest.

    Args: features ``[N, D]``. Returns M tokens in the order chosen.
    """
    n = features.shape[0]
    total = resolve_budget(budget, n)
    unit = _unit_rows(features)
    distance = 1.0 - unit @ unit.T  # [N, N]
    if n > 1:
        first = torch.topk(distance, 2, dim=0, largest=False).values[1]
    else:
        first = torch.zeros(1, dtype=torch.float64)
    chosen = [int(torch.argmax(first))]
    min_distance = distance[chosen[0]].clone()
    for _ in range(total - 1):
        min_distance[chosen] = float("-inf")
        best = int(torch.argmax(min_distance))
        chosen.append(best)
        min_distance = torch.minimum(min_distance, distance[best])
    kept = torch.tensor(chosen, dtype=torch.long)
    return Selection(kept=kept, chunks=[kept])


def dpp_map(features: Tensor, relevance: Tensor, budget: int | float) -> Selection:
    """Greedy MAP of a conditional DPP (CDPruner), by the fast Cholesky update (Chen et al. 2018).

    Kernel ``L = diag(r) · S · diag(r)`` with S the cosine similarity of ``features`` and r the
    relevance. Each step keeps the token with the largest marginal gain in ``log det L_C``
    (ties: lower index). Once the kernel's rank is exhausted (every gain ≤ 1e-12), the remaining
    picks follow relevance (**choice**, so the budget is always met).

    Args: features ``[N, D]``, relevance ``[N]`` (≥ 0). Returns M tokens in the order chosen.
    """
    n = features.shape[0]
    total = resolve_budget(budget, n)
    unit = _unit_rows(features)
    rel = relevance.detach().reshape(-1).to(torch.float64)
    kernel = rel[:, None] * (unit @ unit.T) * rel[None, :]
    gains = kernel.diagonal().clone()  # d_i² in the fast greedy algorithm
    cholesky_rows = torch.zeros(total, n, dtype=torch.float64)
    available = torch.ones(n, dtype=torch.bool)
    chosen = []
    for step in range(total):
        masked = gains.masked_fill(~available, float("-inf"))
        best = int(torch.argmax(masked))
        if masked[best] <= 1e-12:
            order = _descending(rel.masked_fill(~available, float("-inf")))
            chosen.extend(int(i) for i in order[: total - step])
            break
        chosen.append(best)
        available[best] = False
        e = (kernel[best] - cholesky_rows[:step, best] @ cholesky_rows[:step]) / math.sqrt(float(gains[best]))
        cholesky_rows[step] = e
        gains = gains - e * e
    kept = torch.tensor(chosen, dtype=torch.long)
    return Selection(kept=kept, chunks=[kept])


def apply_overrides(kept, force_keep=(), force_drop=()) -> list[int]:
    """A kept set with a user's overrides: ``kept`` in selection order without the forced drops,
    then the forced keeps not already in it (in the order given). Indices are token indices.

    Raises ValueError (a DualviewError) when a token is both forced kept and forced dropped."""
    from dualview.errors import DualviewError

    force_keep, force_drop = [int(i) for i in force_keep], [int(i) for i in force_drop]
    both = sorted(set(force_keep) & set(force_drop))
    if both:
        raise DualviewError(f"Token {both[0]} is both forced kept and forced dropped; choose one.")
    base = [int(i) for i in kept if int(i) not in force_drop]
    return base + [i for i in dict.fromkeys(force_keep) if i not in base]

