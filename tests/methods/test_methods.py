"""The method registry on real analyses of tiny models: budgets, determinism, pruning layers,
FastV's score against the model's own attention weights, and the analysis cache."""

import pytest
import torch

from dualview.errors import DualviewError
from dualview.methods import get_method, method_names, register
from dualview.methods import registry
from dualview.selection import pc_mmr, resolve_budget
from tests.engine_tiny import PROMPT, gradient_image, tiny_session

IMAGE = gradient_image(120, 90)
FAMILIES = ("llava_next", "qwen2_vl", "shapes")
EXPECTED = {"iwp", "iwp-magnitude", "mmr", "fastv", "divprune", "cdpruner", "random", "grid", "oracle"}


def test_every_method_is_registered():
    assert set(method_names()) == EXPECTED
    assert method_names()[0] == "iwp"
    for name in EXPECTED:
        assert get_method(name).summary


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_keeps_exactly_the_budget_deterministically(family):
    session = tiny_session(family)
    analysis = session.analyze(IMAGE, PROMPT)
    n = analysis.num_visual
    for name in method_names():
        for budget in (1, 3, 0.3, 1.0):
            selection = analysis.select(name, budget)
            kept = selection.kept
            assert kept.numel() == resolve_budget(budget, n), (name, budget)
            assert kept.unique().numel() == kept.numel()
            assert 0 <= int(kept.min()) and int(kept.max()) < n
            assert torch.equal(torch.cat(selection.chunks), kept)
    session._analyses.clear()  # a fresh forward pass gives the same choices
    again = session.analyze(IMAGE, PROMPT)
    assert again is not analysis
    for name in method_names():
        assert torch.equal(again.select(name, 0.3).kept, analysis.select(name, 0.3).kept), name
    seeds = {tuple(analysis.select("random", 0.5, seed=s).kept.tolist()) for s in range(4)}
    assert len(seeds) > 1


def test_pruning_layers():
    session = tiny_session("qwen2_vl")  # 4 decoder layers
    analysis = session.analyze(IMAGE, PROMPT, layer=2)
    layers = {name: analysis.prune_layer(name) for name in method_names()}
    assert layers == {"iwp": 2, "iwp-magnitude": 2, "mmr": 2, "oracle": 2, "random": 2, "grid": 2,
                      "fastv": 2, "divprune": 0, "cdpruner": 0}
    assert session.analyze(IMAGE, PROMPT, layer=3).prune_layer("fastv") == 2
    assert tiny_session("shapes").analyze(IMAGE, PROMPT).prune_layer("fastv") == 1  # 2 layers: K = L - 1


def test_iwp_is_pc_mmr_on_the_full_duplication_matrix():
    analysis = tiny_session("llava_next").analyze(IMAGE, PROMPT)
    reference = pc_mmr(analysis.magnitude, analysis.duplication, 20)
    assert torch.equal(analysis.select("iwp", 20).kept, reference.kept)
    assert torch.equal(analysis.select("iwp-magnitude", 5).kept,
                       torch.sort(analysis.magnitude, descending=True, stable=True).indices[:5])


def test_fastv_score_is_the_models_attention():
    session = tiny_session("llava_next")
    analysis = session.analyze(IMAGE, PROMPT)
    model = session.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**analysis.prepared.inputs, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    received = out.attentions[analysis.fastv_layer][0].float().mean(dim=(0, 1))  # heads, query rows
    expected = received[analysis.prepared.visual_positions]
    assert torch.allclose(analysis.attention_received, expected, atol=1e-6)


def test_oracle_first_pick_minimises_the_weight_error():
    analysis = tiny_session("qwen2_vl").analyze(IMAGE, PROMPT)
    errors = torch.tensor([analysis.weight_error([i]) for i in range(analysis.num_visual)])
    first = int(analysis.select("oracle", 1).kept[0])
    assert errors[first] == errors.min()


def test_kept_set_measures():
    analysis = tiny_session("llava_next").analyze(IMAGE, PROMPT)
    everything = list(range(analysis.num_visual))
    assert analysis.weight_error(everything) == pytest.approx(0.0, abs=1e-12)
    assert analysis.attention_error(everything) == pytest.approx(0.0, abs=1e-12)
    kept = analysis.select("iwp", 0.25).kept
    assert 0.0 < analysis.weight_error(kept) < 1.0
    assert analysis.weight_error_per_head(kept).shape == (analysis.visual_keys.shape[0],)
    assert 1.0 <= analysis.effective_rank(kept) <= analysis.visual_values.shape[-1]
    assert analysis.duplication.shape == (analysis.num_visual, analysis.num_visual)
    assert analysis.token_duplication.shape == analysis.magnitude.shape == (analysis.num_visual,)
    assert bool((analysis.magnitude > 0).all()) and bool((analysis.magnitude <= 1).all())
    for bad in ([analysis.num_visual], [-1], [0, 0]):
        with pytest.raises(DualviewError):
            analysis.weight_error(bad)


def test_bad_requests_are_one_sentence_errors():
    analysis = tiny_session("qwen2_vl").analyze(IMAGE, PROMPT)
    with pytest.raises(DualviewError, match="Unknown method 'nope'"):
        analysis.select("nope", 2)
    with pytest.raises(DualviewError, match="no parameter"):
        analysis.select("iwp", 2, gamma=3)
    for budget in (0, 1.5, analysis.num_visual + 1, "half"):
        with pytest.raises(DualviewError, match="Budget"):
            analysis.select("iwp", budget)
    with pytest.raises(DualviewError, match="Layer 7"):
        tiny_session("qwen2_vl").analyze(IMAGE, PROMPT, layer=7)


def test_analysis_is_cached_without_rerunning_the_model():
    session = tiny_session("llava_next")
    first = session.analyze(IMAGE, PROMPT)
    calls = []
    handle = session.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        assert session.analyze(IMAGE.copy(), PROMPT) is first  # same pixels, new object
        for budget in (0.1, 0.2, 0.5):
            first.select("iwp", budget)
        assert calls == []
        session.analyze(IMAGE, PROMPT + " now")
        assert calls == [1]
    finally:
        handle.remove()


def test_a_new_method_is_one_registration():
    @register("first-tokens", layer=0)
    def select(analysis, count, offset: int = 0):
        """Keep the first tokens."""
        from dualview.selection import Selection

        kept = torch.arange(offset, offset + count)
        return Selection(kept=kept, chunks=[kept])

    try:
        analysis = tiny_session("qwen2_vl").analyze(IMAGE, PROMPT)
        assert analysis.select("first-tokens", 3, offset=2).kept.tolist() == [2, 3, 4]
        assert analysis.prune_layer("first-tokens") == 0
        assert get_method("first-tokens").summary == "Keep the first tokens."
    finally:
        registry._METHODS.pop("first-tokens")
