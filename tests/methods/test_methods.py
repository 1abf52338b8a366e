"""The method registry on real analyses of tiny models: budgets, determinism, pruning layers,
FastV's score against the model's own attention weights, and the analysis cache."""

import pytest
import torch

from dualview.errors import DualviewError
from dualview.budget import resolve_budget
from dualview.methods import Param, all_methods, get_method, method_names, register
from dualview.methods import registry
from dualview.selection import mmr, pc_mmr
from tests.engine_tiny import PROMPT, analysis_of, gradient_image, tiny_session

IMAGE = gradient_image(120, 90)
FAMILIES = ("llava_next", "qwen2_vl", "shapes")
EXPECTED = {"iwp", "iwp-magnitude", "mmr", "fastv", "divprune", "cdpruner", "random", "grid", "oracle"}


def test_every_method_is_registered():
    assert set(method_names()) == EXPECTED
    assert method_names()[0] == "iwp"
    for name in EXPECTED:
        assert get_method(name).summary


def test_each_method_declares_the_papers_defaults_once():
    """The registry is the only place defaults live: these are the papers' values (method.md §4,
    Carbonell & Goldstein's even trade-off), and the tensor functions have no defaults of their own."""
    import inspect

    declared = {m.name: m.defaults for m in all_methods()}
    assert declared == {"iwp": {"b0": 2, "growth": 2, "lam": 5.0, "query": "text"}, "mmr": {"trade": 0.5, "query": "text"},
                        "random": {"seed": 0}, "iwp-magnitude": {"query": "text"}, "fastv": {}, "divprune": {}, "cdpruner": {}, "grid": {}, "oracle": {}}
    for function, names in ((pc_mmr, ("b0", "growth", "lam")), (mmr, ("trade",))):
        parameters = inspect.signature(function).parameters
        assert all(parameters[n].default is inspect.Parameter.empty for n in names), function.__name__
    for method in all_methods():
        keywords = list(inspect.signature(method.function).parameters.values())[2:]
        assert all(p.default is inspect.Parameter.empty for p in keywords), method.name
        assert all((p.check(p.default, method.name) == p.default if p.is_choice else p.low <= p.default <= p.high)
                   and p.help for p in method.params), method.name


def test_needs_and_layers_are_declared():
    assert get_method("fastv").needs == {"fastv_attention"}
    assert get_method("divprune").needs == get_method("cdpruner").needs == {"embeddings"}
    assert get_method("random").needs == get_method("grid").needs == frozenset()
    assert get_method("iwp").needs == {"projections"}


def test_parameters_are_checked_against_their_declaration():
    iwp = get_method("iwp")
    assert iwp.check_params({"lam": "2.5", "b0": 4.0}) == {"b0": 4, "growth": 2, "lam": 2.5, "query": "text"}
    for bad, message in [({"b0": 0}, "b₀"), ({"b0": 2.5}, "whole number"), ({"lam": -1}, "from 0 to 100"),
                         ({"lam": "x"}, "λ"), ({"growth": True}, "g"), ({"gamma": 1}, "no parameter gamma")]:
        with pytest.raises(DualviewError, match=message):
            iwp.check_params(bad)
    with pytest.raises(DualviewError, match="trade"):
        get_method("mmr").check_params({"trade": 1.5})


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_keeps_exactly_the_budget_deterministically(family):
    session = tiny_session(family)
    analysis = analysis_of(session, IMAGE)
    n = analysis.num_visual
    for name in method_names():
        for budget in (1, 3, 0.3, 1.0, "30%"):
            selection = get_method(name).select(analysis, budget)
            kept = selection.kept
            assert kept.numel() == resolve_budget(budget, n), (name, budget)
            assert kept.unique().numel() == kept.numel()
            assert 0 <= int(kept.min()) and int(kept.max()) < n
            assert torch.equal(torch.cat(selection.chunks), kept)
    session._analyses.clear()  # a fresh forward pass gives the same choices
    again = analysis_of(session, IMAGE)
    assert again is not analysis
    for name in method_names():
        assert torch.equal(get_method(name).select(again, 0.3).kept, get_method(name).select(analysis, 0.3).kept), name
    seeds = {tuple(get_method("random").select(analysis, 0.5, seed=s).kept.tolist()) for s in range(4)}
    assert len(seeds) > 1


def test_pruning_layers():
    session = tiny_session("qwen2_vl")  # 4 decoder layers
    analysis = analysis_of(session, IMAGE, layer=2)
    layers = {name: get_method(name).prune_layer(analysis) for name in method_names()}
    assert layers == {"iwp": 2, "iwp-magnitude": 2, "mmr": 2, "oracle": 2, "random": 2, "grid": 2,
                      "fastv": 2, "divprune": 0, "cdpruner": 0}
    fastv = get_method("fastv")
    assert fastv.prune_layer(analysis_of(session, IMAGE, layer=3)) == 2
    assert fastv.prune_layer(analysis_of(tiny_session("shapes"), IMAGE)) == 1  # 2 layers: K = L - 1


def test_iwp_is_pc_mmr_on_the_full_duplication_matrix():
    analysis = analysis_of(tiny_session("llava_next"), IMAGE)
    reference = pc_mmr(analysis.magnitude, analysis.duplication, 20, b0=2, growth=2, lam=5.0)
    assert torch.equal(get_method("iwp").select(analysis, 20).kept, reference.kept)
    assert torch.equal(get_method("iwp-magnitude").select(analysis, 5).kept,
                       torch.sort(analysis.magnitude, descending=True, stable=True).indices[:5])


def test_fastv_score_is_the_models_attention():
    session = tiny_session("llava_next")
    analysis = analysis_of(session, IMAGE)
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
    analysis = analysis_of(tiny_session("qwen2_vl"), IMAGE)
    errors = torch.tensor([analysis.weight_error([i]) for i in range(analysis.num_visual)])
    first = int(get_method("oracle").select(analysis, 1).kept[0])
    assert errors[first] == errors.min()


def test_kept_set_measures():
    analysis = analysis_of(tiny_session("llava_next"), IMAGE)
    everything = list(range(analysis.num_visual))
    assert analysis.weight_error(everything) == pytest.approx(0.0, abs=1e-12)
    assert analysis.attention_error(everything) == pytest.approx(0.0, abs=1e-12)
    kept = get_method("iwp").select(analysis, 0.25).kept
    assert 0.0 < analysis.weight_error(kept) < 1.0
    measures = analysis.measures(kept)
    assert measures == {"weight_error": analysis.weight_error(kept), "effective_rank": analysis.effective_rank(kept),
                        "stable_rank": analysis.stable_rank(kept),
                        "visual_weight_error": analysis.weight_error(kept, scope="visual"),
                        "visual_effective_rank": analysis.effective_rank(kept, scope="visual"),
                        "attention_error": analysis.attention_error(kept)}
    assert analysis.weight_error_per_head(kept).shape == (analysis.visual_keys.shape[0],)
    assert 1.0 <= analysis.effective_rank(kept) <= analysis.visual_values.shape[-1]
    assert analysis.duplication.shape == (analysis.num_visual, analysis.num_visual)
    assert analysis.token_duplication.shape == analysis.magnitude.shape == (analysis.num_visual,)
    assert bool((analysis.magnitude > 0).all()) and bool((analysis.magnitude <= 1).all())
    for bad in ([analysis.num_visual], [-1], [0, 0]):
        with pytest.raises(DualviewError):
            analysis.weight_error(bad)


def test_bad_requests_are_one_sentence_errors():
    analysis = analysis_of(tiny_session("qwen2_vl"), IMAGE)
    with pytest.raises(DualviewError, match="Unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(DualviewError, match="no parameter"):
        get_method("iwp").select(analysis, 2, gamma=3)
    for budget in (0, 1.5, analysis.num_visual + 1, "half"):
        with pytest.raises(DualviewError, match="Budget"):
            get_method("iwp").select(analysis, budget)
    with pytest.raises(DualviewError, match="Layer 7"):
        analysis_of(tiny_session("qwen2_vl"), IMAGE, layer=7)


def test_analysis_is_cached_without_rerunning_the_model():
    session = tiny_session("llava_next")
    first = analysis_of(session, IMAGE)
    calls = []
    handle = session.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        assert analysis_of(session, IMAGE.copy()) is first  # same pixels, new object
        for budget in (0.1, 0.2, 0.5):
            get_method("iwp").select(first, budget)
        assert calls == []
        analysis_of(session, IMAGE, PROMPT + " now")
        assert calls == [1]
    finally:
        handle.remove()


def test_a_new_method_is_one_registration():
    @register("first-tokens", layer=0, needs=(), params=(Param("offset", 0, 0, 10, "first token kept"),))
    def select(inputs, count, offset):
        """Keep the first tokens."""
        from dualview.selection import Selection

        kept = torch.arange(offset, offset + count)
        return Selection(kept=kept, chunks=[kept])

    try:
        analysis = analysis_of(tiny_session("qwen2_vl"), IMAGE)
        method = get_method("first-tokens")
        assert method.select(analysis, 3, offset=2).kept.tolist() == [2, 3, 4]
        assert method.select(analysis, 2).kept.tolist() == [0, 1]  # the declared default
        assert method.prune_layer(analysis) == 0
        assert get_method("first-tokens").summary == "Keep the first tokens."
    finally:
        registry._METHODS.pop("first-tokens")
    with pytest.raises(ValueError, match="without defaults"):
        register("with-default")(lambda inputs, count, offset=0: None)


@pytest.mark.parametrize("family", ["llava_next", "shapes"])
def test_nested_methods_keep_prefixes_of_their_larger_selections(family):
    """What the registry's ``nested`` claims (the curves read one selection's prefixes)."""
    analysis = analysis_of(tiny_session(family), IMAGE)
    n = analysis.num_visual
    budgets = sorted({1, 2, 3, n // 5, n // 3, n // 2, n - 1, n} - {0})
    for method in [m for m in all_methods() if m.nested]:
        largest = method.select(analysis, n).kept.tolist()
        for budget in budgets:
            assert method.select(analysis, budget).kept.tolist() == largest[:budget], (method.name, budget)
    assert not get_method("grid").nested

