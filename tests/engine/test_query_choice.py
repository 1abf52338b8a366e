"""Issue 18: the analysis's scores read the rows they must (method.md §2, §3, §8.1), and the
attention views (attention received, update share) against the model's own tensors.

References are built from what the model itself computes in one forward pass (its q_proj / k_proj
outputs at the analysis layer, i.e. before RoPE, and its KV cache, i.e. keys after RoPE), with
hand-written loops, never from the analysis's own projections."""

import math

import pytest
import torch

from dualview.errors import DualviewError
from dualview.methods import get_method
from tests.engine_tiny import PROMPT, gradient_image, tiny_session

IMAGE = gradient_image(100, 72)
ATOL = 2e-6
DISTINCT = 100 * ATOL
"""How far a wrong choice of rows must be from the reference, so the comparisons can fail."""


def model_tensors(session, analysis, eager: bool = False):
    """The model's own pre-RoPE q ``[H, S, d]``, pre-RoPE k, post-RoPE k and v ``[Hkv, S, d]`` at the
    analysis layer (and its eager attention weights ``[H, S, S]`` when ``eager``)."""
    layer = analysis.layer
    attention = session.adapter.layers[layer].self_attn
    dim = attention.head_dim
    outputs = {}
    handles = [getattr(attention, name).register_forward_hook(
        lambda module, args, out, name=name: outputs.__setitem__(name, out[0].detach().double()))
        for name in ("q_proj", "k_proj")]
    previous = session.model.config._attn_implementation
    if eager:
        session.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = session.model(**analysis.prepared.inputs, use_cache=True, output_attentions=eager)
    finally:
        session.model.set_attn_implementation(previous)
        for handle in handles:
            handle.remove()
    length = analysis.prepared.length
    q_pre = outputs["q_proj"].view(length, -1, dim).transpose(0, 1)
    k_pre = outputs["k_proj"].view(length, -1, dim).transpose(0, 1)
    cache = out.cache.layers[layer]
    weights = out.attentions[layer][0].double() if eager else None
    return q_pre, k_pre, cache.keys[0].double(), cache.values[0].double(), weights


def hand_magnitude(q_rows, k, v):
    """method.md §2 by loops: per query head, q_T = mean of the rows, log P = q_T·k/√d + log‖v‖,
    shifted by the head's max, exponentiated; mean over heads. q_rows [H, R, d], k/v [Hkv, N, d]."""
    heads, kv_heads, dim = q_rows.shape[0], k.shape[0], k.shape[-1]
    total = torch.zeros(k.shape[1], dtype=torch.float64)
    for h in range(heads):
        g = h // (heads // kv_heads)
        q_mean = q_rows[h].mean(dim=0)
        log_p = torch.tensor([float(q_mean @ k[g, i]) / math.sqrt(dim) + math.log(float(v[g, i].norm()))
                              for i in range(k.shape[1])], dtype=torch.float64)
        total += torch.exp(log_p - log_p.max())
    return total / heads


def hand_duplication(k, v):
    """method.md §3 by loops: mean over KV heads of (cos(v_i, v_j) · exp(−‖k_i − k_j‖² / (2√d)))²."""
    kv_heads, n, dim = k.shape
    dup = torch.zeros(n, n, dtype=torch.float64)
    for g in range(kv_heads):
        for i in range(n):
            for j in range(n):
                cos = float(v[g, i] @ v[g, j]) / float(v[g, i].norm() * v[g, j].norm())
                dup[i, j] += (cos * math.exp(-float((k[g, i] - k[g, j]).square().sum()) / (2 * math.sqrt(dim)))) ** 2
    return dup / kv_heads


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_magnitude_and_duplication_read_the_rows_they_must(family):
    session = tiny_session(family)
    analysis = session.analyze(session.prepare(IMAGE, PROMPT))
    prepared = analysis.prepared
    visual, text = prepared.visual_positions, prepared.text_positions
    q_pre, k_pre, k_post, v, _ = model_tensors(session, analysis)
    expected = hand_magnitude(q_pre[:, text], k_pre[:, visual], v[:, visual])
    torch.testing.assert_close(analysis.magnitude.double(), expected, rtol=0, atol=ATOL)
    # the test can tell the wrong rows apart: every row's mean, or post-RoPE q and k, give other scores
    every_row = hand_magnitude(q_pre, k_pre[:, visual], v[:, visual])
    assert (every_row - expected).abs().max() > DISTINCT
    dup = hand_duplication(k_post[:, visual], v[:, visual])
    torch.testing.assert_close(analysis.duplication.double(), dup, rtol=0, atol=ATOL)
    assert (hand_duplication(k_pre[:, visual], v[:, visual]) - dup).abs().max() > DISTINCT  # pre-RoPE keys differ


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_each_query_choice_is_the_magnitude_of_its_own_rows(family):
    session = tiny_session(family)
    analysis = session.analyze(session.prepare(IMAGE, PROMPT))
    prepared = analysis.prepared
    visual, text = prepared.visual_positions, prepared.text_positions
    p = analysis.projections
    # text is today's magnitude, bit for bit
    from dualview import dual_form

    today = dual_form.magnitude(p.q_pre[:, text], p.k_pre[:, visual], p.v[:, visual]).float()
    assert torch.equal(analysis.magnitude_for("text"), today) and torch.equal(analysis.magnitude, today)
    q_pre, k_pre, _, v, _ = model_tensors(session, analysis)
    non_visual = [i for i in range(prepared.length) if i not in set(visual.tolist())]
    rows = {"token:0": [int(text[0])], "token:3": [int(text[3])], "last": [prepared.length - 1], "all": non_visual}
    for choice, positions in rows.items():
        expected = hand_magnitude(q_pre[:, positions], k_pre[:, visual], v[:, visual])
        torch.testing.assert_close(analysis.magnitude_for(choice).double(), expected, rtol=0, atol=ATOL)
        assert (expected - analysis.magnitude.double()).abs().max() > DISTINCT  # a different choice, different scores
    assert analysis.magnitude_for(" Token:03 ") is analysis.magnitude_for("token:3")  # cached per canonical choice
    with pytest.raises(DualviewError, match="does not exist"):
        analysis.magnitude_for(f"token:{text.numel()}")


def test_query_is_a_parameter_of_the_methods_that_read_q_T():
    session = tiny_session("llava")
    analysis = session.analyze(session.prepare(IMAGE, PROMPT))
    for name in ("iwp", "iwp-magnitude", "mmr"):
        method = get_method(name)
        assert method.param("query").default == "text" and method.param("query").is_choice
        assert method.check_params({"query": " LAST "})["query"] == "last"
        with pytest.raises(DualviewError, match="Unknown query choice"):
            method.check_params({"query": "first"})
    every = analysis.num_visual  # the whole ranking, best first
    order = torch.sort(analysis.magnitude_for("last"), descending=True, stable=True).indices
    assert torch.equal(get_method("iwp-magnitude").select(analysis, every, query="last").kept, order)
    assert not torch.equal(get_method("iwp-magnitude").select(analysis, every).kept, order)
    assert "query" not in get_method("iwp").numeric_defaults


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_attention_received_by_the_chosen_rows_is_the_models_attention(family):
    session = tiny_session(family)
    analysis = session.analyze(session.prepare(IMAGE, PROMPT))
    prepared = analysis.prepared
    *_, weights = model_tensors(session, analysis, eager=True)  # [H, S, S]
    for choice in ("text", "last", "all", "token:2"):
        rows = analysis.query_rows(choice)
        expected = weights[:, rows][:, :, prepared.visual_positions].mean(dim=1)
        torch.testing.assert_close(analysis.attention_received_by(choice).double(), expected, rtol=0, atol=2e-6)
    # the kept mass the debug measures report is the model's attention on the kept positions
    kept = torch.arange(0, prepared.num_visual, 3)
    positions = analysis.sequence_keep(kept)
    for choice in ("last", "token:1"):
        rows = analysis.query_rows(choice)
        reported = analysis.debug_measures(kept, choice)
        expected = weights[:, rows][:, :, positions].sum(dim=-1).mean(dim=1)  # [H]
        torch.testing.assert_close(torch.tensor(reported["per_head"]["kept_mass"], dtype=torch.float64), expected,
                                   rtol=0, atol=2e-6)
        assert reported["kept_mass"] < 1.0 and reported["query_positions"] == rows.tolist()
    everything = analysis.debug_measures(torch.arange(prepared.num_visual), "all")
    assert everything["kept_mass"] == 1.0 and everything["dropped_part"] == everything["normaliser_part"] == 0.0


def test_update_share_is_each_updates_norm_over_the_weights_norm():
    """‖ΔW_i‖ / ‖W‖ against a brute-force double sum of ⟨ΔW_i, ΔW_j⟩ = (v_i·v_j) κ(k_i, k_j) over the
    model's own post-RoPE keys and values of the whole sequence."""
    session = tiny_session("llava")
    analysis = session.analyze(session.prepare(IMAGE, PROMPT))
    _, _, k, v, _ = model_tensors(session, analysis)
    kv_heads, n, dim = k.shape
    expected = torch.zeros(kv_heads, analysis.num_visual, dtype=torch.float64)
    for g in range(kv_heads):
        total = sum(float(v[g, i] @ v[g, j]) * math.exp(float(k[g, i] @ k[g, j]) / math.sqrt(dim))
                    for i in range(n) for j in range(n))
        for t, i in enumerate(analysis.prepared.visual_positions.tolist()):
            expected[g, t] = math.sqrt(math.exp(float(k[g, i] @ k[g, i]) / math.sqrt(dim)) * float(v[g, i] @ v[g, i]) / total)
    torch.testing.assert_close(analysis.update_share().double(), expected, rtol=1e-4, atol=0)


def test_measures_with_a_query_report_its_kept_mass_from_one_attention_pass():
    """Issue 15 item 5: the curves' points take the text rows' split once; the numbers are those of
    the separate calls (the attention error against the plain function of dual_form)."""
    from dualview import dual_form

    session = tiny_session("llava")
    analysis = session.analyze(session.prepare(IMAGE, PROMPT))
    kept = torch.arange(0, analysis.num_visual, 4)
    p, text = analysis.projections, analysis.prepared.text_positions
    reference = dual_form.attention_output_error(p.q_post[:, text], p.k_post, p.v, analysis.sequence_keep(kept),
                                                 query_positions=text)
    plain = analysis.measures(kept)
    assert "kept_mass" not in plain and plain["attention_error"] == reference
    for choice in ("text", "last"):
        measured = analysis.measures(kept, choice)
        assert measured["kept_mass"] == analysis.debug_measures(kept, choice)["kept_mass"] < 1.0
        assert {k: v for k, v in measured.items() if k != "kept_mass"} == plain
    calls = []
    original = dual_form.attention_split
    dual_form.attention_split = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        fresh = torch.arange(1, analysis.num_visual, 5)  # a kept set not measured yet
        analysis.measures(fresh, "text")
        analysis.debug_measures(fresh, "text")  # the page's other view of the same set reuses it
        analysis.measures(fresh.flip(0), "text")  # the same set in another order
    finally:
        dual_form.attention_split = original
    assert len(calls) == 1
