"""Kept attention mass from an analysis's projections against the model's own eager attention
probabilities, for every query choice (post-RoPE rows at their positions, GQA, causal)."""

import pytest
import torch

import dualview
from dualview import dual_form
from dualview.queries import query_positions
from tests.engine_tiny import PROMPT, gradient_image, tiny_dir

IMAGE = gradient_image(100, 72)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_kept_mass_is_the_models_attention_on_the_kept_keys(family):
    session = dualview.load(tiny_dir(family), device="cpu")  # a copy: eager attention for its weights
    session.model.set_attn_implementation("eager")
    analysis = session.analyze(session.prepare(IMAGE, PROMPT))
    prepared = analysis.prepared
    with torch.no_grad():
        attention = session.model(**prepared.inputs, use_cache=False, output_attentions=True).attentions
    weights = attention[analysis.layer][0].double()  # [H, S, S]
    keep = torch.ones(prepared.length, dtype=torch.bool)
    keep[prepared.visual_positions[::2]] = False
    projections = analysis.projections
    for choice in ("text", "last", "all", "token:0", "token:2"):
        rows = query_positions(choice, prepared.visual_positions, prepared.text_positions, prepared.length)
        mass = dual_form.kept_attention_mass(projections.q_post[:, rows], projections.k_post, keep, rows)
        expected = weights[:, rows][:, :, keep].sum(dim=-1)
        torch.testing.assert_close(mass, expected, rtol=0, atol=2e-6)
        assert (mass < 1).any()  # visual tokens were dropped from what these rows see


def _attention_outputs(session, layer, **logits_kwargs):
    """The input of decoder layer ``layer``'s o_proj (the heads' attention outputs) in one forward pass."""
    captured = []
    module = session.adapter.layers[layer].self_attn.o_proj
    handle = module.register_forward_pre_hook(lambda mod, args: captured.append(args[0][0].detach().double()))
    try:
        positions = session.logits(session.prepare(IMAGE, PROMPT), layer=layer, **logits_kwargs)[1]
    finally:
        handle.remove()
    return captured[0], positions  # [S', H * dv], [S']


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_split_outputs_are_the_models_attention_outputs_unpruned_and_pruned(family):
    """A(q; K, V) and A(q; K_S, V_S) of the split are what layer l's attention computes without and
    with pruning, so their difference (the two parts' sum) is the change pruning makes there."""
    from tests.engine_tiny import tiny_session

    session = tiny_session(family)
    analysis = session.analyze(session.prepare(IMAGE, PROMPT))
    prepared, layer = analysis.prepared, analysis.layer
    kept_visual = torch.arange(0, prepared.visual_positions.numel(), 3)
    keep = analysis.sequence_keep(kept_visual)
    rows = query_positions("all", prepared.visual_positions, prepared.text_positions, prepared.length)
    p = analysis.projections
    split = dual_form.attention_split(p.q_post[:, rows], p.k_post, p.v, keep, rows)
    heads, _, dv = split.full.shape
    full, _ = _attention_outputs(session, layer)
    pruned, positions = _attention_outputs(session, layer, keep=kept_visual)
    where = {int(position): i for i, position in enumerate(positions)}
    expected_full = full[rows].reshape(len(rows), heads, dv).transpose(0, 1)
    expected_pruned = pruned[[where[int(r)] for r in rows]].reshape(len(rows), heads, dv).transpose(0, 1)
    torch.testing.assert_close(split.full, expected_full, rtol=0, atol=1e-5)
    torch.testing.assert_close(split.pruned, expected_pruned, rtol=0, atol=1e-5)
    assert (split.full - split.pruned).abs().max() > 1e-3  # pruning changed the outputs
