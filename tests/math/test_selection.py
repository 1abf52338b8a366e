"""Selection rules against plain-Python transcriptions of their definitions."""

import math
import random

import pytest
import numpy as np
import torch

from dualview import dual_form as df
from dualview import selection as sel

from dualview.budget import resolve_budget  # noqa: E402

PCMMR = dict(b0=2, growth=2, lam=5.0)
"""Test inputs (the paper's values; the defaults themselves are pinned in tests/methods)."""


def _random_problem(seed, n):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(2, n, 6, generator=g, dtype=torch.float64) * 0.6
    v = torch.randn(2, n, 5, generator=g, dtype=torch.float64)
    magnitude = torch.rand(n, generator=g, dtype=torch.float64)
    return magnitude, df.duplication(k, v), k, v


def _algorithm_1(p, dup, budget, b0, g, lam):
    """Algorithm 1 of the IWP paper, transcribed with lists and floats."""
    p = list(map(float, p))
    dup = dup.tolist()
    chosen, unchosen, b, chunks = [], list(range(len(p))), b0, []
    while len(chosen) < budget:
        k = min(b, budget - len(chosen))
        chunk = sorted(unchosen, key=lambda i: (-p[i], i))[:k]
        chosen += chunk
        chunks.append(chunk)
        unchosen = [i for i in unchosen if i not in chunk]
        for i in unchosen:
            s = max(dup[i][j] for j in chunk)
            p[i] = p[i] * max(0.01, 1 - lam * s)
        b = b * g
    return chosen, chunks


@pytest.mark.parametrize("seed", range(12))
def test_pc_mmr_equals_algorithm_1(seed):
    rng = random.Random(seed)
    n = rng.choice([5, 17, 40, 96])
    budget = rng.randint(1, n)
    b0, g, lam = rng.choice([1, 2, 3]), rng.choice([1, 2, 4]), rng.choice([0.5, 1.0, 5.0, 10.0])
    magnitude, dup, k, v = _random_problem(seed, n)
    expected, expected_chunks = _algorithm_1(magnitude, dup, budget, b0, g, lam)
    got = sel.pc_mmr(magnitude, dup, budget, b0=b0, growth=g, lam=lam)
    assert got.kept.tolist() == expected
    assert [c.tolist() for c in got.chunks] == expected_chunks
    blocks = sel.pc_mmr(magnitude, df.DuplicationBlocks(k, v), budget, b0=b0, growth=g, lam=lam)
    assert blocks.kept.tolist() == expected


def test_pc_mmr_budget_chunks_and_trace():
    magnitude, dup, _, _ = _random_problem(0, 100)
    result = sel.pc_mmr(magnitude, dup, 40, **PCMMR)
    assert len(set(result.kept.tolist())) == 40 == result.kept.numel()
    assert [c.numel() for c in result.chunks] == [2, 4, 8, 16, 10]
    assert len(result.scores) == len(result.chunks) == len(result.floored)
    for r, chunk in enumerate(result.chunks):
        scores = result.scores[r]
        taken_before = torch.cat(result.chunks[:r]) if r else torch.zeros(0, dtype=torch.long)
        assert bool(scores[taken_before].isnan().all())
        remaining = scores.nan_to_num(float("-inf"))
        assert float(remaining[chunk].min()) >= float(remaining.masked_fill(torch.isin(torch.arange(100), chunk), float("-inf")).max())
    assert torch.equal(result.scores[0], magnitude)
    rounds = result.round_of(100)
    assert int((rounds >= 0).sum()) == 40 and int(rounds[result.chunks[3][0]]) == 3
    assert sel.pc_mmr(magnitude, dup, 0.111, **PCMMR).kept.numel() == round(0.111 * 100)


def test_pc_mmr_without_penalty_is_top_k():
    magnitude, dup, _, _ = _random_problem(1, 60)
    got = sel.pc_mmr(magnitude, dup, 25, **{**PCMMR, "lam": 0.0})
    assert got.kept.tolist() == torch.argsort(magnitude, descending=True)[:25].tolist()
    assert got.kept.tolist() == sel.top_k(magnitude, 25).kept.tolist()


def _planted_copies(seed):
    """12 distinct tokens (orthogonal values: zero mutual duplication), token i copied (i % 3) times."""
    g = torch.Generator().manual_seed(seed)
    distinct = 12
    k = torch.randn(1, distinct, 4, generator=g, dtype=torch.float64)
    v = torch.eye(distinct, dtype=torch.float64)[None]
    source = list(range(distinct)) + [i for i in range(distinct) for _ in range(i % 3)]
    order = torch.randperm(len(source), generator=g)
    source = [source[i] for i in order]
    magnitude = 0.5 + 0.5 * torch.rand(distinct, generator=g, dtype=torch.float64)
    return k[:, source], v[:, source], magnitude[source], source


@pytest.mark.parametrize("seed", range(5))
def test_pc_mmr_never_keeps_copies_while_distinct_tokens_remain(seed):
    k, v, magnitude, source = _planted_copies(seed)
    dup = df.duplication(k, v)
    one_at_a_time = sel.pc_mmr(magnitude, dup, 12, **{**PCMMR, "b0": 1, "growth": 1})
    assert sorted(source[i] for i in one_at_a_time.kept.tolist()) == list(range(12))
    # With growing chunks, two copies can only be kept when they fall into the same chunk.
    result = sel.pc_mmr(magnitude, dup, 12, **PCMMR)
    chunk_of = {int(i): r for r, chunk in enumerate(result.chunks) for i in chunk}
    for a in result.kept.tolist():
        for b in result.kept.tolist():
            if a < b and source[a] == source[b]:
                assert chunk_of[a] == chunk_of[b]


def test_oracle_le_pc_mmr_le_random_when_updates_are_orthogonal():
    """Orthogonal updates: the best set keeps the largest ‖ΔW_i‖; PC-MMR scored by ‖ΔW_i‖ finds it."""
    g = torch.Generator().manual_seed(3)
    n = 30
    k = torch.randn(2, n, 4, generator=g, dtype=torch.float64) * 0.5
    v = torch.eye(n, dtype=torch.float64).expand(2, n, n) * (0.2 + torch.rand(n, generator=g, dtype=torch.float64))[None, :, None]
    norms = (torch.exp(0.5 * (k * k).sum(-1) / 2.0) * v.norm(dim=-1)).mean(0)  # mean_h ‖ΔW_i‖ (√d = 2)
    budget = 10
    oracle = df.weight_error(k, v, df.greedy_oracle(k, v, budget))
    pc = df.weight_error(k, v, sel.pc_mmr(norms, df.duplication(k, v), budget, **PCMMR).kept)
    randoms = [df.weight_error(k, v, sel.random_subset(n, budget, seed).kept) for seed in range(20)]
    assert oracle <= pc + 1e-12
    assert all(pc <= r + 1e-12 for r in randoms)
    assert pc < max(randoms)


def _mmr_reference(relevance, dup, budget, trade):
    r = [float(x) / float(max(relevance)) for x in relevance]
    chosen = []
    for _ in range(budget):
        def objective(i):
            return trade * r[i] - (1 - trade) * max((float(dup[i][j]) for j in chosen), default=0.0)
        chosen.append(max((i for i in range(len(r)) if i not in chosen), key=lambda i: (objective(i), -i)))
    return chosen


@pytest.mark.parametrize("seed,trade", [(0, 0.5), (1, 0.2), (2, 0.9)])
def test_mmr_equals_reference(seed, trade):
    magnitude, dup, k, v = _random_problem(seed, 30)
    assert sel.mmr(magnitude, dup, 12, trade=trade).kept.tolist() == _mmr_reference(magnitude, dup, 12, trade)
    assert sel.mmr(magnitude, df.DuplicationBlocks(k, v), 12, trade=trade).kept.tolist() == _mmr_reference(magnitude, dup, 12, trade)


def _divprune_reference(features, budget):
    x = [list(map(float, row)) for row in features]
    norm = [math.sqrt(sum(a * a for a in row)) for row in x]
    n = len(x)
    dist = [[1 - sum(a * b for a, b in zip(x[i], x[j])) / (norm[i] * norm[j]) for j in range(n)] for i in range(n)]
    first = max(range(n), key=lambda i: (min(dist[i][j] for j in range(n) if j != i), -i))
    chosen = [first]
    while len(chosen) < budget:
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (min(dist[i][j] for j in chosen), -i)))
    return chosen


@pytest.mark.parametrize("seed", range(4))
def test_max_min_diversity_equals_reference(seed):
    features = torch.randn(25, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert sel.max_min_diversity(features, 9).kept.tolist() == _divprune_reference(features, 9)


def _dpp_reference(features, relevance, budget):
    unit = torch.nn.functional.normalize(features, dim=-1)
    kernel = relevance[:, None] * (unit @ unit.T) * relevance[None, :]
    chosen = []
    for _ in range(budget):
        def log_det(i):
            idx = chosen + [i]
            return float(torch.linalg.slogdet(kernel[idx][:, idx]).logabsdet)
        chosen.append(max((i for i in range(len(relevance)) if i not in chosen), key=lambda i: (log_det(i), -i)))
    return chosen


@pytest.mark.parametrize("seed", range(4))
def test_dpp_map_equals_brute_force_greedy(seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(20, 12, generator=g, dtype=torch.float64)
    relevance = 0.1 + torch.rand(20, generator=g, dtype=torch.float64)
    assert sel.dpp_map(features, relevance, 8).kept.tolist() == _dpp_reference(features, relevance, 8)


def test_dpp_map_meets_budget_beyond_kernel_rank():
    g = torch.Generator().manual_seed(0)
    features, relevance = torch.randn(20, 3, generator=g), torch.rand(20, generator=g) + 0.1
    kept = sel.dpp_map(features, relevance, 10).kept
    assert kept.numel() == 10 == len(set(kept.tolist()))


def test_uniform_grid_spreads_exactly_budget_tokens():
    assert sorted(sel.uniform_grid(4, 4, 4).kept.tolist()) == [5, 7, 13, 15]
    for rows, cols in [(24, 24), (14, 14), (7, 13), (1, 9)]:
        for budget in [1, 2, 5, 0.111, 0.222, 0.353, 1.0]:
            kept = sel.uniform_grid(rows, cols, budget).kept
            m = resolve_budget(budget, rows * cols)
            assert kept.numel() == m == len(set(kept.tolist()))
            assert int(kept.min()) >= 0 and int(kept.max()) < rows * cols
    rows_hit = {int(i) // 24 for i in sel.uniform_grid(24, 24, 64).kept}
    assert len(rows_hit) == 8  # an 8 × 8 sub-grid


def test_random_subset_is_seeded():
    a, b = sel.random_subset(100, 30, seed=4), sel.random_subset(100, 30, seed=4)
    assert torch.equal(a.kept, b.kept) and len(set(a.kept.tolist())) == 30
    assert not torch.equal(a.kept, sel.random_subset(100, 30, seed=5).kept)


@pytest.mark.parametrize("budget,n,expected", [(0.111, 576, 64), (0.222, 576, 128), (0.353, 576, 203), (0.001, 10, 1), (1.0, 7, 7), (5, 9, 5),
                                                 ("35.3%", 196, 69), ("10", 10, 10), (np.int64(5), 9, 5),
                                                 (torch.tensor(0.5), 10, 5), (np.float32(0.5), 10, 5)])
def test_resolve_budget(budget, n, expected):
    assert resolve_budget(budget, n) == expected


@pytest.mark.parametrize("budget", [0, -1, 11, 0.0, 1.5, float("nan"), "ten", "110%", True, None, [3]])
def test_resolve_budget_refuses(budget):
    with pytest.raises(ValueError):
        resolve_budget(budget, 10)


@pytest.mark.parametrize("params", [dict(b0=0), dict(growth=0), dict(lam=-1.0), dict(b0=1.5), dict(lam=float("nan"))])
def test_pc_mmr_refuses_bad_parameters(params):
    magnitude, dup, _, _ = _random_problem(0, 10)
    with pytest.raises(ValueError):
        sel.pc_mmr(magnitude, dup, 3, **{**PCMMR, **params})
