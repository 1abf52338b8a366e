"""Property-based tests of the tensor maths: random shapes, dtypes and extreme values."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualview import dual_form as df
from dualview import selection as sel

DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64])
SCALES = st.sampled_from([1e-6, 1e-2, 1.0, 30.0, 1e4])

from dualview.budget import resolve_budget  # noqa: E402


@st.composite
def layers(draw):
    """(q_text [H,T,d], k [Hkv,N,d], v [Hkv,N,dv]) with random GQA shapes, dtype and scale."""
    kv_heads = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    n, t = draw(st.integers(1, 24)), draw(st.integers(1, 4))
    d, dv = draw(st.integers(1, 16)), draw(st.integers(1, 8))
    dtype, scale = draw(DTYPES), draw(SCALES)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q = torch.randn(kv_heads * group, t, d, generator=g) * scale
    k = torch.randn(kv_heads, n, d, generator=g) * scale
    v = torch.randn(kv_heads, n, dv, generator=g) * draw(SCALES)
    if draw(st.booleans()):  # planted exact duplicates and a zero value vector
        k[:, -1], v[:, -1] = k[:, 0], v[:, 0]
        v[:, n // 2] = 0
    return q.to(dtype), k.to(dtype), v.to(dtype)


@settings(max_examples=60, deadline=None)
@given(layers())
def test_magnitude_is_finite_and_in_unit_interval(layer):
    q, k, v = layer
    p = df.magnitude(q, k, v)
    assert p.shape == (k.shape[1],)
    assert bool(torch.isfinite(p).all()) and bool((p >= 0).all()) and bool((p <= 1 + 1e-6).all())


@settings(max_examples=60, deadline=None)
@given(layers())
def test_duplication_invariants(layer):
    _, k, v = layer
    dup = df.duplication(k, v)
    n = k.shape[1]
    assert dup.shape == (n, n) and bool(torch.isfinite(dup).all())
    assert torch.equal(dup, dup.T) and bool((dup.diagonal() == 1).all())
    assert bool((dup >= 0).all() & (dup <= 1).all())
    tok = df.token_duplication(dup)
    assert tok.shape == (n,) and bool((tok >= 0).all() & (tok <= 1).all())


@settings(max_examples=60, deadline=None)
@given(layers(), st.data())
def test_weight_error_invariants(layer, data):
    q, k, v = layer
    n = k.shape[1]
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    err = df.weight_error(k, v, keep)
    assert math.isfinite(err) and err >= 0
    assert df.weight_error(k, v, torch.ones(n, dtype=torch.bool)) == 0.0
    spectrum = df.weight_spectrum(k, v, keep)
    assert bool(torch.isfinite(spectrum).all()) and bool((spectrum >= 0).all())
    assert 0.0 <= df.effective_rank(k, v, keep) <= v.shape[-1] + 1e-9
    att = df.attention_output_error(q, k, v, keep)
    assert math.isfinite(att) and att >= 0


@settings(max_examples=80, deadline=None)
@given(layers(), st.integers(1, 8), st.integers(1, 4), st.floats(0, 20), st.floats(0.0001, 1.0))
def test_pc_mmr_keeps_exactly_the_budget(layer, b0, growth, lam, fraction):
    q, k, v = layer
    n = k.shape[1]
    result = sel.pc_mmr(df.magnitude(q, k, v), df.DuplicationBlocks(k, v), fraction, b0=b0, growth=growth, lam=lam)
    m = resolve_budget(fraction, n)
    assert result.kept.numel() == m == len(set(result.kept.tolist()))
    assert torch.equal(torch.cat(result.chunks), result.kept)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-5, 50), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.text(max_size=3)), st.integers(1, 40))
def test_resolve_budget_accepts_or_refuses_cleanly(budget, n):
    try:
        m = resolve_budget(budget, n)
    except ValueError as error:
        assert str(error)
    else:
        assert 1 <= m <= n
