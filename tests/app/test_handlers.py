"""The app's handlers called directly, as the page calls them (no browser, no server)."""

import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from dualview.app import handlers
from dualview.app.models import ModelHolder
from dualview.errors import DualviewError


@pytest.fixture(scope="module")
def holder():
    return ModelHolder(device="cpu")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    from dualview.app.examples import load_examples
    from dualview.shapes.world import write_examples

    folder = tmp_path_factory.mktemp("examples")
    write_examples(folder)
    return load_examples(folder)[0]


def test_an_example_describes_only_its_own_image_and_question(holder, example):
    """Ground truth and evidence belong to (that picture, that question): a new question or a new
    picture drops them (issue 17, kind 6)."""
    same = handlers.run(holder, example["path"], example["question"], "builtin", "iwp", 20, "", [], example)["state"]
    assert same.example is example and same.evidence_tokens()
    asked = handlers.run(holder, example["path"], "how many objects are there?", "builtin", "iwp", 20, "", [], example)
    assert asked["state"].example is None and asked["state"].evidence_tokens() == []
    assert "Ground truth" not in asked["answers"]
    assert "Ground truth" in handlers.answer(holder, same)["answers"]


def test_every_methods_parameters_reach_its_selection(holder, example):
    """The page's parameter controls come from the registry; each one changes what its method does."""
    state = handlers.run(holder, example["path"], example["question"], "builtin", "iwp", 30, "", [], None)["state"]
    names = [f"{'+'.join(m)}.{p.name}" for m, p in handlers.PARAM_CONTROLS]
    assert names == ["iwp.b0", "iwp.growth", "iwp.lam", "iwp+iwp-magnitude+mmr.query", "mmr.trade", "random.seed"]
    values = [None] * len(names)
    first = handlers.update(state, "random", 30, values)["summary"]["kept"]
    values[names.index("random.seed")] = 7
    reseeded = handlers.update(state, "random", 30, values)["summary"]
    assert reseeded["kept"] != first and reseeded["settings"]["params"] == {"seed": 7}
    values[names.index("mmr.trade")] = 0.9
    assert handlers.update(state, "mmr", 30, values)["summary"]["settings"]["params"] == {"trade": 0.9, "query": "text"}
    values[names.index("iwp.lam")] = 500
    with pytest.raises(DualviewError, match="iwp's lam"):
        handlers.update(state, "iwp", 30, values)


def test_steps_outside_the_selection_are_refused_with_a_sentence(holder, example):
    state = handlers.run(holder, example["path"], example["question"], "builtin", "iwp", 30, "", [], None)["state"]
    rounds = len(state.trace("pcmmr").chunks)
    assert handlers.step(state, "pcmmr", rounds - 1)["pcmmr_plot"] is not None
    for bad in (rounds, -1, 1.5, "2"):
        with pytest.raises(DualviewError, match="does not exist"):
            handlers.step(state, "pcmmr", bad)
    assert json.loads(handlers.classic_view(state)["classic_plot"].to_json())["layout"]["title"]["text"]


def test_the_status_names_the_layer_each_method_prunes_from(holder, example):
    """FastV prunes from layer 2 and DivPrune from 0 on the built-in model, whatever the analysis layer."""
    from dualview.engine.loading import BUILTIN_DIR

    layers = json.loads((BUILTIN_DIR / "config.json").read_text())["text_config"]["num_hidden_layers"]
    state = handlers.run(holder, example["path"], example["question"], "builtin", "iwp", 20, "", [], None)["state"]
    for method, layer in (("iwp", 4), ("fastv", 2), ("divprune", 0)):
        assert f"prunes from layer {layer} of {layers}" in handlers.update(state, method, 20, [])["status"]


def test_answers_are_shown_only_for_the_kept_set_they_were_made_for(holder, example):
    state = handlers.run(holder, example["path"], example["question"], "builtin", "iwp", 20, "", [], None)["state"]
    assert handlers.update(state, "iwp", 20, [])["summary"]["answers"] is not None  # same kept set
    moved = handlers.update(state, "iwp", 60, [])
    assert moved["summary"]["answers"] is None and moved["summary"]["answers_stale"]
    answered = handlers.answer(holder, state)["summary"]
    text_tokens = state.analysis.prepared.length - state.num_visual
    assert answered["answers"]["tokens_after_pruning"] == text_tokens + 60 and not answered["answers_stale"]


def test_visitors_choose_among_the_operators_models(example, tmp_path):
    """Without the operator's any-model switch the model box cannot load, or probe, anything else:
    an existing directory and a missing one get the same sentence, and nothing is loaded."""
    from dualview.engine.loading import BUILTIN_DIR

    holder = ModelHolder(device="cpu", allowed=["builtin"])
    for name in (str(BUILTIN_DIR), str(tmp_path / "missing"), "org/model"):
        with pytest.raises(DualviewError) as refused:
            handlers.run(holder, example["path"], example["question"], name, "iwp", 20, "", [], None)
        assert str(refused.value) == "This server offers the models builtin; choose one of them."
    assert holder._sessions == {}
    assert handlers.run(holder, example["path"], example["question"], "builtin", "iwp", 20, "", [], None)["state"]


def test_the_exported_command_reproduces_the_view_with_its_forced_patches(holder, example, capsys, monkeypatch):
    """The export's CLI call (forced patches, budget, answer length and the saved upload included)
    gives the kept set, measures and answers the app shows (issue 16 item 14)."""
    import shlex

    from dualview import cli

    upload = Image.open(example["path"])  # not the example: the picture is saved beside the JSON
    state = handlers.run(holder, upload, example["question"], "builtin", "iwp", 20, "", [], None)["state"]
    kept = state.kept()
    dropped = next(t for t in range(state.num_visual) if t not in kept)
    handlers.inspect(state, dropped, "force keep")
    handlers.inspect(state, kept[0], "force drop")
    shown = handlers.answer(holder, state)["summary"]
    exported = handlers.export(state)
    command = exported["command"]
    assert f"--force-keep {dropped}" in command and f"--force-drop {kept[0]}" in command
    assert f"--image {handlers.UPLOAD_NAME} " in command  # no server path: run where the files are saved
    capsys.readouterr()
    monkeypatch.chdir(Path(exported["files"][0]).parent)
    assert cli.main(shlex.split(command)[3:]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kept"] == shown["kept"] and result["weight_error"] == shown["measures"]["weight_error"]
    assert result["pruned_answer"]["text"] == shown["answers"]["pruned"]
    assert result["full_answer"]["text"] == shown["answers"]["full"]


def displayed_heads(teaching: str) -> list[tuple[float, float, float]]:
    """(logit, shift, ‖v‖) of every per-head row of the teaching panel's magnitude table."""
    rows = []
    for line in teaching.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].isdigit():
            rows.append((float(cells[2]), float(cells[3]), float(cells[5])))
    return rows


@pytest.mark.parametrize("query, token", [("text", 0), ("last", 37), ("token:1", 150)])
def test_the_teaching_panel_shows_what_recomputes_the_magnitude_by_hand(holder, example, query, token):
    """Issue 16 item 2: from the displayed per-head logit, shift and ‖v‖ alone, exp(logit − shift)·‖v‖
    averaged over the heads gives the analysis's own P_i (for the query rows chosen)."""
    import math
    import re

    names = [f"{'+'.join(m)}.{p.name}" for m, p in handlers.PARAM_CONTROLS]
    values = [None] * len(names)
    values[names.index("iwp+iwp-magnitude+mmr.query")] = query
    state = handlers.run(holder, example["path"], example["question"], "builtin", "iwp", 20, "", values, None)["state"]
    teaching = handlers.inspect(state, token, "inspect")["teaching"]
    heads = displayed_heads(teaching)
    assert len(heads) == state.analysis.projections.q_pre.shape[0]
    by_hand = sum(math.exp(logit - shift) * norm for logit, shift, norm in heads) / len(heads)
    expected = float(state.analysis.magnitude_for(query)[token])
    assert by_hand == pytest.approx(expected, rel=2e-3)
    shown = float(re.search(r"P_i=\\mathrm\{mean\}_h P\^h_i=([0-9.e-]+)\$", teaching).group(1))
    assert shown == pytest.approx(expected, rel=1e-4)
    assert f"`{query}` rows" in teaching


def test_forced_patches_are_called_forced_not_a_further_round(holder, example):
    """Issue 16 item 7: a patch kept only because the user forced it is no "round 7" anywhere."""
    import numpy as np

    state = handlers.run(holder, example["path"], example["question"], "builtin", "iwp", 20, "", [], None)["state"]
    rounds = len(state.selection.chunks)
    dropped = next(t for t in range(state.num_visual) if t not in state.kept())
    shown = handlers.inspect(state, dropped, "force keep")
    names = [trace.name for trace in shown["space"].data]
    assert "forced keep" in names and f"round {rounds + 1}" not in names
    forced = [t for t in shown["kept"].data if t.name == "forced keep" and t.type == "heatmap"]
    assert forced and all("forced by you" in t.hovertemplate and "round" not in t.hovertemplate for t in forced)
    for layer in (t for t in shown["kept"].data if t.name == "kept"):
        assert np.nanmax(np.asarray(layer.z, dtype=float)) <= rounds - 1
        assert layer.colorbar.ticktext[-1] == str(rounds) or not layer.showscale
    assert shown["summary"]["rounds"][dropped] == -2 and dropped in shown["summary"]["kept"]
    assert "kept because you forced it" in shown["teaching"]


def test_every_view_says_when_it_no_longer_matches_the_inputs(holder, example):
    """Issue 16 item 6: a new prompt, picture, model or layer without Run marks every view stale
    (naming the input, saying Run updates them), also after a budget move; the comparison and the
    every-method table say which budget they were made for once it moves."""
    state = handlers.run(holder, example["path"], example["question"], "builtin", "iwp", 20, "", [], None)["state"]
    assert "Stale" not in handlers.update(state, "iwp", 20, [])["status"]
    assert handlers.compare(state, ["iwp", "random"])["compare_note"] == "Kept masks at 20 of 196 tokens (current)."
    moved = handlers.update(state, "iwp", 30, [])
    assert moved["compare_note"] == "**Stale:** Kept masks at 20 tokens; the budget is now 30: press *Compare kept masks* to update."
    assert "at 30 of 196" in handlers.compare(state, ["iwp"])["compare_note"]

    for which, value in (("prompt", "what colour is the square?"), ("layer", "2"), ("model", "other"), ("image", None)):
        shown = handlers.input_changed(state, which, value)
        name = {"layer": "pruning layer"}.get(which, which)
        for view in ("status", "answers"):
            assert shown[view].startswith(f"**Stale: the {name} changed since the last Run.**"), (which, view)
            assert "press **Run** to update them" in shown[view]
        assert shown["compare_note"].startswith("**Stale:**") and "press **Run**" in shown["compare_note"]
        assert "Stale: the" in handlers.update(state, "iwp", 25, [])["status"]  # a budget move keeps the mark
        handlers.input_changed(state, which, {"prompt": f"  {example['question']} ", "layer": "", "model": "builtin",
                                              "image": None}[which])
        assert ("Stale" in handlers.update(state, "iwp", 25, [])["status"]) == (which == "image")
    fresh = handlers.run(holder, example["path"], "what colour is the square?", "builtin", "iwp", 20, "", [], None)
    assert "Stale" not in fresh["status"] and fresh["compare"] is None


def test_old_export_folders_are_deleted_at_the_next_export(tmp_path):
    """A server's temp folder must not fill up with exports (a reviewer found 164 of them, 934 MB)."""
    now = time.time()
    old, fresh, other = (tmp_path / f"{handlers.EXPORT_PREFIX}old", tmp_path / f"{handlers.EXPORT_PREFIX}new",
                         tmp_path / "someone-else")
    for folder in (old, fresh, other):
        folder.mkdir()
        (folder / "dualview.json").write_text("{}")
    aged = now - handlers.EXPORT_MAX_AGE_S - 5
    os.utime(old, (aged, aged))
    os.utime(other, (aged, aged))
    assert handlers.prune_exports(tmp_path, now) == 1
    assert not old.exists() and fresh.exists() and other.exists()
