"""The dual-form quantities against independent references (explicit feature maps, loops)."""

import itertools
import math

import pytest
import torch

from dualview import dual_form as df


def _rand_kv(seed, hkv=2, n=12, d=4, dv=3, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(hkv, n, d, generator=g, dtype=torch.float64) * scale
    v = torch.randn(hkv, n, dv, generator=g, dtype=torch.float64)
    return k.to(dtype), v.to(dtype)


# --- the dual form itself ------------------------------------------------------------------------


def test_linear_attention_equals_implicit_weight():
    """q Kᵀ V = q W with W = Σ_i k_iᵀ v_i (one rank-1 update per token)."""
    k, v = _rand_kv(0, hkv=1, n=9, d=5, dv=4)
    k, v = k[0], v[0]
    q = torch.randn(3, 5, dtype=torch.float64)
    w = sum(torch.outer(k[i], v[i]) for i in range(k.shape[0]))
    torch.testing.assert_close(q @ k.T @ v, q @ w, rtol=1e-12, atol=1e-12)


def _exp_kernel_features(x, order=14):
    """Explicit (truncated Taylor) feature map of κ(x, y) = exp(x·y/√d): [N, d] -> [N, F].

    exp(t) = Σ_n tⁿ/n! and (x·y)ⁿ = ⟨x^{⊗n}, y^{⊗n}⟩, so φ(x) = ⊕_n x^{⊗n} / √(n! · d^{n/2}).
    """
    n_tok, d = x.shape
    blocks, power = [torch.ones(n_tok, 1, dtype=torch.float64)], torch.ones(n_tok, 1, dtype=torch.float64)
    for n in range(1, order + 1):
        power = (power[:, :, None] * x[:, None, :]).reshape(n_tok, -1)
        blocks.append(power / math.sqrt(math.factorial(n) * d ** (n / 2)))
    return torch.cat(blocks, dim=1)


@pytest.mark.parametrize("seed", range(3))
def test_kernel_trick_matches_explicit_feature_map(seed):
    """Weight error and singular values of W_S equal those of the explicitly formed W = Σ φ(k_i)ᵀ v_i."""
    k, v = _rand_kv(seed, hkv=2, n=10, d=2, dv=3, scale=0.25)
    keep = torch.tensor([0, 3, 4, 8])
    mask = torch.zeros(10, dtype=torch.bool)
    mask[keep] = True
    errors, spectra, shares = [], [], []
    for h in range(2):
        phi = _exp_kernel_features(k[h])  # [N, F]
        torch.testing.assert_close(phi @ phi.T, torch.exp(k[h] @ k[h].T / math.sqrt(2)), rtol=1e-12, atol=1e-12)
        w = phi.T @ v[h]  # [F, dv]
        w_s = phi[mask].T @ v[h][mask]
        errors.append(torch.linalg.norm(w - w_s) / torch.linalg.norm(w))
        spectra.append(torch.linalg.svdvals(w_s) / torch.linalg.norm(w))
        shares.append(torch.stack([torch.linalg.norm(phi[i:i + 1].T @ v[h][i:i + 1]) for i in range(10)])
                      / torch.linalg.norm(w))
        # ‖ΔW_i‖_F = √κ(k_i, k_i) · ‖v_i‖
        delta_norm = torch.linalg.norm(phi[:, :, None] * v[h][:, None, :], dim=(1, 2))
        torch.testing.assert_close(
            delta_norm, torch.exp(0.5 * (k[h] * k[h]).sum(-1) / math.sqrt(2)) * v[h].norm(dim=-1), rtol=1e-10, atol=0
        )
    torch.testing.assert_close(df.weight_error_per_head(k, v, keep), torch.stack(errors), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(df.update_share(k, v), torch.stack(shares), rtol=1e-9, atol=1e-12)
    assert df.weight_error(k, v, mask) == pytest.approx(float(torch.stack(errors).mean()), rel=1e-9)
    torch.testing.assert_close(df.weight_spectrum(k, v, keep), torch.stack(spectra), rtol=1e-7, atol=1e-10)
    sigma_sq = torch.stack(spectra) ** 2
    p = sigma_sq / sigma_sq.sum(-1, keepdim=True)
    expected_eff = torch.exp(-(p * torch.log(p)).sum(-1)).mean()
    expected_stable = (sigma_sq.sum(-1) / sigma_sq[:, 0]).mean()
    assert df.effective_rank(k, v, keep) == pytest.approx(float(expected_eff), rel=1e-6)
    assert df.stable_rank(k, v, keep) == pytest.approx(float(expected_stable), rel=1e-6)


def test_weight_error_endpoints_and_huge_keys():
    k, v = _rand_kv(4, n=8)
    assert df.weight_error(k, v, torch.ones(8, dtype=torch.bool)) == 0.0
    assert df.weight_error(k, v, torch.zeros(8, dtype=torch.bool)) == pytest.approx(1.0)
    big = df.weight_error(k * 300.0, v, torch.tensor([0, 1, 2]))  # κ overflows unless shifted
    assert math.isfinite(big) and big >= 0.0


# --- information magnitude -----------------------------------------------------------------------


def _magnitude_loop(q_text, k, v):
    h_q, h_kv = q_text.shape[0], k.shape[0]
    d = k.shape[-1]
    per_head = []
    for h in range(h_q):
        kv = h // (h_q // h_kv)
        q_mean = q_text[h].double().mean(0)
        raw = [math.exp(float(q_mean @ k[kv, i].double()) / math.sqrt(d)) * float(v[kv, i].double().norm()) for i in range(k.shape[1])]
        top = max(raw)
        per_head.append([r / top for r in raw])
    return torch.tensor(per_head, dtype=torch.float64).mean(0)


@pytest.mark.parametrize("h_q,h_kv", [(4, 4), (4, 2), (6, 1)])
def test_magnitude_equals_direct_loop(h_q, h_kv):
    g = torch.Generator().manual_seed(h_q * 10 + h_kv)
    q = torch.randn(h_q, 5, 8, generator=g, dtype=torch.float64)
    k = torch.randn(h_kv, 11, 8, generator=g, dtype=torch.float64)
    v = torch.randn(h_kv, 11, 6, generator=g, dtype=torch.float64)
    got = df.magnitude(q, k, v)
    torch.testing.assert_close(got, _magnitude_loop(q, k, v), rtol=1e-12, atol=1e-14)
    assert got.shape == (11,) and bool((got > 0).all()) and bool((got <= 1).all())


def test_magnitude_invariant_to_a_constant_logit_shift_per_head():
    """Adding δ to every key of a head adds q_T·δ to all its logits: the scores must not move."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 10, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 10, 4, generator=g, dtype=torch.float64)
    shifted = k.clone()
    shifted[1] += 5.0 * torch.randn(8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(df.magnitude(q, shifted, v), df.magnitude(q, k, v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_magnitude_finite_for_huge_logits(dtype):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(4, 3, 16, generator=g).to(dtype)
    k = (torch.randn(2, 20, 16, generator=g) * 1e4).to(dtype)
    v = torch.randn(2, 20, 8, generator=g).to(dtype)
    got = df.magnitude(q, k, v)
    assert got.dtype == torch.float32
    assert bool(torch.isfinite(got).all()) and float(got.max()) <= 1.0 and float(got.max()) > 0


# --- information duplication ---------------------------------------------------------------------


def _duplication_pair(k, v, i, j):
    d = k.shape[-1]
    total = 0.0
    for h in range(k.shape[0]):
        cos = float(v[h, i] @ v[h, j] / (v[h, i].norm() * v[h, j].norm()))
        s = cos * math.exp(-float(((k[h, i] - k[h, j]) ** 2).sum()) / (2 * math.sqrt(d)))
        total += s * s
    return total / k.shape[0]


def test_duplication_equals_direct_formula_and_is_a_similarity():
    k, v = _rand_kv(3, hkv=3, n=9, d=4, dv=5, scale=0.7)
    dup = df.duplication(k, v)
    expected = torch.tensor([[_duplication_pair(k, v, i, j) for j in range(9)] for i in range(9)], dtype=torch.float64)
    torch.testing.assert_close(dup, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(dup, dup.T)
    assert bool((dup.diagonal() == 1).all())
    assert bool((dup >= 0).all() & (dup <= 1).all())


def test_duplication_blocks_equal_the_full_matrix_in_float32():
    k, v = _rand_kv(5, hkv=2, n=30, d=8, dv=8, scale=3.0, dtype=torch.float32)
    full = df.duplication(k, v)
    rows, cols = torch.tensor([3, 0, 29, 7]), torch.tensor([7, 8, 3])
    torch.testing.assert_close(df.DuplicationBlocks(k, v).block(rows, cols), full[rows][:, cols])
    assert df.DuplicationBlocks(k, v).block(rows, cols)[3, 0] == 1.0  # same token 7
    reference = df.duplication(k.double(), v.double())
    torch.testing.assert_close(full.double(), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tile", [1, 2, 64])
def test_duplication_row_maxima_equal_the_blocks_maxima(tile):
    k, v = _rand_kv(6, hkv=2, n=40, d=8, dv=8, scale=2.0, dtype=torch.float64)
    blocks = df.DuplicationBlocks(k, v)
    full = df.duplication(k, v)
    rows, cols = torch.tensor([3, 0, 39, 7, 12]), torch.tensor([7, 8, 3, 20, 21])
    got = blocks.row_max(rows, cols, tile=tile)
    torch.testing.assert_close(got, full[rows][:, cols].amax(dim=1), rtol=1e-12, atol=1e-14)
    assert got[0] == got[3] == 1.0  # tokens 3 and 7 are among the columns
    assert blocks.row_max(torch.tensor([5]), torch.tensor([5]), tile=tile).item() == 1.0


def test_token_duplication_is_mean_of_top_off_diagonal():
    dup = torch.tensor([[1.0, 0.2, 0.9, 0.1], [0.2, 1.0, 0.3, 0.4], [0.9, 0.3, 1.0, 0.0], [0.1, 0.4, 0.0, 1.0]])
    torch.testing.assert_close(df.token_duplication(dup, top=2), torch.tensor([0.55, 0.35, 0.6, 0.25]))
    torch.testing.assert_close(df.token_duplication(dup, top=8), torch.tensor([1.2, 0.9, 1.2, 0.5]) / 3)


# --- attention output error and the oracle -------------------------------------------------------


def test_attention_output_error_against_explicit_softmax():
    g = torch.Generator().manual_seed(11)
    q = torch.randn(4, 3, 6, generator=g, dtype=torch.float64)
    k = torch.randn(2, 10, 6, generator=g, dtype=torch.float64)
    v = torch.randn(2, 10, 5, generator=g, dtype=torch.float64)
    keep = torch.tensor([1, 2, 5, 7, 8, 9])
    positions = torch.tensor([7, 8, 9])
    full, pruned = [], []
    for h in range(4):
        kv = h // 2
        for t in range(3):
            visible = [j for j in range(10) if j <= positions[t]]
            for subset, out in ((visible, full), ([j for j in visible if j in keep.tolist()], pruned)):
                logits = torch.stack([q[h, t] @ k[kv, j] / math.sqrt(6) for j in subset])
                out.append(torch.softmax(logits, 0) @ v[kv, subset])
    expected = torch.linalg.norm(torch.stack(pruned) - torch.stack(full)) / torch.linalg.norm(torch.stack(full))
    assert df.attention_output_error(q, k, v, keep, query_positions=positions) == pytest.approx(float(expected), rel=1e-10)
    assert df.attention_output_error(q, k, v, torch.ones(10, dtype=torch.bool)) == 0.0


def test_greedy_oracle_is_the_greedy_of_weight_error():
    """Each step adds the candidate that minimises the public weight_error (brute force)."""
    k, v = _rand_kv(9, hkv=2, n=14, d=4, dv=3, scale=0.8)
    always = torch.tensor([12, 13])
    chosen = df.greedy_oracle(k, v, 5, always=always)
    kept = set(always.tolist())
    for step in range(5):
        errors = {c: df.weight_error(k, v, torch.tensor(sorted(kept | {c}))) for c in range(12) if c not in kept}
        best = min(errors, key=lambda c: (round(errors[c], 12), c))
        assert int(chosen[step]) == best
        kept.add(best)


def test_oracle_is_optimal_when_updates_are_orthogonal():
    """Orthogonal ΔW_i: ‖W − W_S‖² = Σ_dropped ‖ΔW_i‖², so the best set keeps the largest updates."""
    n = 6
    k = torch.randn(1, n, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v = torch.eye(n, dtype=torch.float64)[None] * torch.tensor([3.0, 1.0, 2.5, 0.5, 2.0, 1.5], dtype=torch.float64)[None, :, None]
    chosen = df.greedy_oracle(k, v, 3)
    best = min(itertools.combinations(range(n), 3), key=lambda s: df.weight_error(k, v, torch.tensor(s)))
    assert sorted(chosen.tolist()) == sorted(best)


def _brute_force(k, v, candidates, kept):
    """Every measure of ImplicitWeight from the full N × N Gram and kernel matrices (float64)."""
    k, v = k.double(), v.double()
    kernel = torch.exp(k @ k.transpose(1, 2) / math.sqrt(k.shape[-1]))  # unshifted: small keys here
    gram = (v @ v.transpose(1, 2)) * kernel
    n = k.shape[1]
    dropped = torch.zeros(n, dtype=torch.bool)
    dropped[candidates[~kept]] = True
    visual = torch.zeros(n, dtype=torch.bool)
    visual[candidates] = True
    energy = gram[:, dropped][:, :, dropped].sum(dim=(1, 2))
    error = (energy / gram.sum(dim=(1, 2))).sqrt()
    visual_error = (energy / gram[:, visual][:, :, visual].sum(dim=(1, 2))).sqrt()

    def ranks(members):
        m = v[:, members].transpose(1, 2) @ kernel[:, members][:, :, members] @ v[:, members]
        sigma_sq = torch.linalg.eigvalsh(0.5 * (m + m.transpose(1, 2))).clamp_min(0)
        p = sigma_sq / sigma_sq.sum(-1, keepdim=True)
        return torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum(-1)), sigma_sq.sum(-1) / sigma_sq.amax(-1)

    effective, stable = ranks(~dropped)
    visual_effective, _ = ranks(visual & ~dropped)
    return error, visual_error, effective, stable, visual_effective


@pytest.mark.parametrize("kept_share", [0.1, 0.5, 0.9])
def test_implicit_weight_measures_equal_the_full_gram(kept_share):
    """Both ways ImplicitWeight takes (the kept side or the dropped side is the smaller) against
    the brute-force Gram, with always-kept tokens spread between the candidates."""
    g = torch.Generator().manual_seed(int(kept_share * 10))
    k, v = 0.3 * torch.randn(2, 70, 6, generator=g), torch.randn(2, 70, 5, generator=g)
    candidates = torch.nonzero(torch.arange(70) % 7 != 3).reshape(-1)
    kept = torch.rand(candidates.numel(), generator=g) < kept_share
    got = df.ImplicitWeight(k, v, candidates, block=16).measure(kept)
    error, visual_error, effective, stable, visual_effective = _brute_force(k, v, candidates, kept)
    for name, expected in [("weight_error", error), ("visual_weight_error", visual_error),
                           ("effective_rank", effective), ("stable_rank", stable),
                           ("visual_effective_rank", visual_effective)]:
        torch.testing.assert_close(getattr(got, name), expected, rtol=1e-9, atol=1e-12, msg=name)
    everything = df.ImplicitWeight(k, v, candidates).measure(torch.ones(candidates.numel(), dtype=torch.bool))
    assert torch.equal(everything.weight_error, torch.zeros(2)) and torch.equal(everything.visual_weight_error, torch.zeros(2))


def test_effective_rank_of_a_subnormal_kept_weight_stays_within_its_dimension():
    # the kept token's kernel value exp(1 - 729) is subnormal in float64: its rank-1 W_S must
    # still count as rank 1, not more (shares were once divided by an energy clamped up to `tiny`)
    k = torch.tensor([[[1.0], [27.0]]])
    v = torch.ones(1, 2, 1)
    keep = torch.tensor([True, False])
    assert df.effective_rank(k, v, keep) == 1.0
    assert df.stable_rank(k, v, keep) == 1.0
