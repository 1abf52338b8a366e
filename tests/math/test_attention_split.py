"""Kept attention mass and the normaliser split (method.md §8) against eager loops written here."""

import math

import pytest
import torch

from dualview import dual_form as df


def _problem(seed, heads=4, kv_heads=2, rows=3, n=11, d=5, dv=3, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, rows, d, generator=g, dtype=torch.float64) * scale
    k = torch.randn(kv_heads, n, d, generator=g, dtype=torch.float64) * scale
    v = torch.randn(kv_heads, n, dv, generator=g, dtype=torch.float64)
    return q, k, v


def _eager(q, k, v, kept, positions):
    """Per head and row, with plain exp and sums (rows shifted by their own max logit).

    Returns full, pruned, dropped_part, normaliser_part [H, R, dv] and kept mass [H, R], each from
    its defining formula: η = 1/Σκ, η_S = 1/Σ_S κ, dropped = η Σ_{j∉S} κ v, normaliser = (η − η_S) Σ_S κ v.
    """
    heads, rows, d = q.shape
    group = heads // k.shape[0]
    n = k.shape[1]
    out = {name: torch.zeros(heads, rows, v.shape[-1], dtype=torch.float64)
           for name in ("full", "pruned", "dropped", "normaliser")}
    mass = torch.zeros(heads, rows, dtype=torch.float64)
    for h in range(heads):
        kh, vh = k[h // group], v[h // group]
        for r in range(rows):
            seen = [j for j in range(n) if positions is None or j <= int(positions[r])]
            logits = {j: float(q[h, r] @ kh[j]) / math.sqrt(d) for j in seen}
            top = max(logits.values())
            kappa = {j: math.exp(logits[j] - top) for j in seen}  # κ up to a common factor
            z_all = sum(kappa.values())
            z_kept = sum(kappa[j] for j in seen if kept[j])
            sum_kept = sum((kappa[j] * vh[j] for j in seen if kept[j]), torch.zeros(v.shape[-1], dtype=torch.float64))
            sum_dropped = sum((kappa[j] * vh[j] for j in seen if not kept[j]), torch.zeros(v.shape[-1], dtype=torch.float64))
            out["full"][h, r] = (sum_kept + sum_dropped) / z_all
            out["pruned"][h, r] = sum_kept / z_kept if z_kept > 0 else 0.0
            out["dropped"][h, r] = sum_dropped / z_all
            out["normaliser"][h, r] = (1 / z_all - 1 / z_kept) * sum_kept if z_kept > 0 else 0.0
            mass[h, r] = z_kept / z_all
    return out, mass


def _random_mask(seed, n, share=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) < share


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_kept_mass_is_exactly_one_for_the_full_set(causal, kv_heads):
    q, k, _ = _problem(0, kv_heads=kv_heads, scale=2.0)
    positions = torch.tensor([4, 7, 10]) if causal else None
    mass = df.kept_attention_mass(q, k, torch.ones(11, dtype=torch.bool), positions)
    assert mass.shape == (4, 3)
    assert torch.equal(mass, torch.ones(4, 3, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("causal", [False, True])
def test_kept_mass_equals_explicit_attention_sum(seed, causal):
    q, k, v = _problem(seed)
    kept = _random_mask(seed + 10, 11)
    positions = torch.tensor([2, 6, 10]) if causal else None
    _, expected = _eager(q, k, v, kept, positions)
    torch.testing.assert_close(df.kept_attention_mass(q, k, kept, positions), expected, rtol=1e-12, atol=1e-14)
    # An index tensor means the same set as the mask.
    torch.testing.assert_close(df.kept_attention_mass(q, k, kept.nonzero().reshape(-1), positions), expected,
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("causal", [False, True])
def test_split_parts_against_their_definitions_and_sum(seed, causal):
    q, k, v = _problem(seed, scale=1.5)
    kept = _random_mask(seed + 20, 11)
    positions = torch.tensor([3, 8, 10]) if causal else None
    expected, mass = _eager(q, k, v, kept, positions)
    split = df.attention_split(q, k, v, kept, positions)
    torch.testing.assert_close(split.full, expected["full"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(split.pruned, expected["pruned"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(split.dropped_part, expected["dropped"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(split.normaliser_part, expected["normaliser"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(split.kept_mass, mass, rtol=1e-12, atol=1e-14)
    # The two parts, as vectors, sum to A(q; K, V) − A(q; K_S, V_S) of the eager reference.
    difference = expected["full"] - expected["pruned"]
    assert (split.dropped_part + split.normaliser_part - difference).abs().max() < 1e-6
    torch.testing.assert_close(split.dropped_part + split.normaliser_part, difference, rtol=1e-10, atol=1e-12)
    # Both parts matter here: neither is zero.
    assert split.dropped_error.min() > 0 and split.normaliser_error.min() > 0


@pytest.mark.parametrize("seed", range(3))
def test_relative_errors_per_head_and_consistency_with_attention_output_error(seed):
    q, k, v = _problem(seed, rows=4)
    kept = _random_mask(seed + 30, 11, share=0.6)
    positions = torch.tensor([1, 5, 9, 10])
    expected, _ = _eager(q, k, v, kept, positions)
    split = df.attention_split(q, k, v, kept, positions)
    for h in range(q.shape[0]):
        norm = torch.linalg.norm(expected["full"][h])
        assert float(split.output_error[h]) == pytest.approx(float(torch.linalg.norm(expected["full"][h] - expected["pruned"][h]) / norm), rel=1e-10)
        assert float(split.dropped_error[h]) == pytest.approx(float(torch.linalg.norm(expected["dropped"][h]) / norm), rel=1e-10)
        assert float(split.normaliser_error[h]) == pytest.approx(float(torch.linalg.norm(expected["normaliser"][h]) / norm), rel=1e-10)
    # All heads at once, attention_output_error is the reference's ‖A − A_S‖_F / ‖A‖_F.
    overall = torch.linalg.norm(expected["full"] - expected["pruned"]) / torch.linalg.norm(expected["full"])
    assert df.attention_output_error(q, k, v, kept, positions) == pytest.approx(float(overall), rel=1e-10)
    torch.testing.assert_close(split.kept_mass_per_head, split.kept_mass.mean(dim=1))


@pytest.mark.parametrize("seed", range(2))
def test_the_change_is_the_dropped_mass_times_dropped_minus_kept_output(seed):
    """method.md §8.3: A − A_S = (1 − m)(A_D − A_S), A_D the attention over the dropped keys alone."""
    q, k, v = _problem(seed + 40)
    kept = _random_mask(seed + 40, 11)
    kept[0] = True  # every row sees a kept and a dropped key
    kept[1] = False
    positions = torch.tensor([2, 6, 10])
    expected, mass = _eager(q, k, v, kept, positions)
    only_dropped, _ = _eager(q, k, v, ~kept, positions)
    split = df.attention_split(q, k, v, kept, positions)
    torch.testing.assert_close(split.dropped_part, (1 - mass)[..., None] * only_dropped["pruned"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(split.full - split.pruned,
                               (1 - mass)[..., None] * (only_dropped["pruned"] - expected["pruned"]), rtol=1e-10, atol=1e-12)


def test_everything_kept_leaves_no_difference():
    q, k, v = _problem(5)
    split = df.attention_split(q, k, v, torch.ones(11, dtype=torch.bool), torch.tensor([0, 5, 10]))
    assert torch.equal(split.full, split.pruned)
    assert torch.equal(split.dropped_part, torch.zeros_like(split.full))
    assert torch.equal(split.normaliser_part, torch.zeros_like(split.full))
    assert torch.equal(split.kept_mass, torch.ones(4, 3, dtype=torch.float64))


def test_a_row_that_sees_no_kept_key():
    """Row 0 sees only key 0, which is dropped: A_S is 0 (as attention_output_error), m = 0, and the
    whole difference is the dropped part."""
    q, k, v = _problem(6)
    kept = torch.ones(11, dtype=torch.bool)
    kept[0] = False
    split = df.attention_split(q, k, v, kept, torch.tensor([0, 5, 10]))
    assert torch.equal(split.pruned[:, 0], torch.zeros(4, 3, dtype=torch.float64))
    assert torch.equal(split.kept_mass[:, 0], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(split.dropped_part[:, 0], split.full[:, 0], rtol=0, atol=0)
    assert torch.equal(split.normaliser_part[:, 0], torch.zeros(4, 3, dtype=torch.float64))


def test_huge_logits_stay_finite_and_tiny_dropped_mass_is_resolved():
    """Logits of 400 overflow exp unshifted in float32; a dropped key 300 logits below the rest has
    attention ~1e-131, which 1 − m computed as 1 − Σ_S a_j would round to 0."""
    q, k, v = _problem(7, kv_heads=1, heads=1, rows=1, n=4, d=4)
    q = torch.full((1, 1, 4), 20.0, dtype=torch.float64)
    k = torch.full((1, 4, 4), 10.0, dtype=torch.float64)  # logits 200 each
    k[0, 3] = 2.5  # logit 50: far below
    kept = torch.tensor([True, True, True, False])
    split = df.attention_split(q, k, v, kept)
    logit_gap = (10.0 - 2.5) * 20.0 * 4 / 2.0  # (q·k_0 − q·k_3) / √d
    dropped_mass = math.exp(-logit_gap) / (3 + math.exp(-logit_gap))
    assert dropped_mass > 0
    assert float(1 - split.kept_mass[0, 0]) == 0.0  # m itself rounds to 1 ...
    expected_normaliser = -dropped_mass * v[0, :3].mean(dim=0)  # ... but the normaliser part is resolved
    torch.testing.assert_close(split.normaliser_part[0, 0], expected_normaliser, rtol=1e-10, atol=0)
    for part in (split.full, split.pruned, split.dropped_part, split.normaliser_part):
        assert torch.isfinite(part).all()


def test_bad_shapes_are_value_errors():
    q, k, v = _problem(8)
    with pytest.raises(ValueError, match="share"):
        df.kept_attention_mass(q[:3], k, torch.ones(11, dtype=torch.bool))
    with pytest.raises(ValueError, match="query_positions"):
        df.attention_split(q, k, v, torch.ones(11, dtype=torch.bool), torch.tensor([0, 11, 3]))
    with pytest.raises(ValueError, match="query_positions"):
        df.attention_split(q, k, v, torch.ones(11, dtype=torch.bool), torch.tensor([0, 1]))
