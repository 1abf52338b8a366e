"""Growing a model deeper keeps its function exactly, and the new layers can learn."""

import json

import pytest
import torch

from dualview.shapes import grow as G
from dualview.shapes import model as M
from dualview.shapes import train as T
from dualview.shapes import world


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tiny = M.build_model(M.TINY, seed=3).eval()
    return T.export(tiny, tmp_path_factory.mktemp("src") / "m", M.TINY)


def logits(model_dir, seed: int):
    model, processor = M.load_builtin(model_dir)
    s = world.sample_from_seed(seed, size=M.TINY.image_size)
    inputs = processor(images=s.image, text=M.format_prompt(s.question), return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def test_layer_sources_insert_copies_after_the_named_layer():
    assert G.layer_sources(3, 5, 1) == [(0, False), (1, False), (1, True), (1, True), (2, False)]
    assert G.layer_sources(2, 3) == [(0, False), (1, False), (1, True)]  # appended: copies of the last
    assert G.layer_sources(2, 2) == [(0, False), (1, False)]


def test_a_grown_model_gives_exactly_the_same_logits(source, tmp_path):
    out = tmp_path / "grown"
    G.main([str(source), str(out), "--vision-layers", "3", "--text-insert", "0:2"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vision_config"]["num_hidden_layers"] == 3 and cfg["text_config"]["num_hidden_layers"] == 4
    assert cfg["shapes_world"]["model_size"]["text_layers"] == 4  # what --init reads the size from
    for seed in (0, 1, 2):
        assert torch.equal(logits(source, seed), logits(out, seed))


def test_new_layers_copy_their_source_with_zeroed_outputs_and_can_learn():
    model = M.build_model(M.TINY, seed=5)
    grown, plans = G.growth_plan(M.TINY, vision_layers=2, text_after=0, text_added=1)
    state = G.grow_state(model.state_dict(), plans)
    old, new = model.state_dict(), state
    for key in ("self_attn.q_proj.weight", "mlp.gate_proj.weight", "input_layernorm.weight"):
        assert torch.equal(new[f"{G.TEXT}1.{key}"], old[f"{G.TEXT}0.{key}"])
        assert torch.equal(new[f"{G.TEXT}2.{key}"], old[f"{G.TEXT}1.{key}"])  # the old layer 1 moved up
    for key in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        assert not new[f"{G.TEXT}1.{key}"].any() and old[f"{G.TEXT}0.{key}"].any()
    for key in ("self_attn.out_proj.weight", "self_attn.out_proj.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
        assert not new[f"{G.VISION}1.{key}"].any()
    assert torch.equal(new[f"{G.VISION}1.mlp.fc1.weight"], old[f"{G.VISION}0.mlp.fc1.weight"])

    bigger = M.build_model(grown)
    bigger.load_state_dict(state)
    s = world.sample_from_seed(0, size=M.TINY.image_size)
    inputs = M.build_processor(M.TINY)(images=s.image, text=M.format_prompt(s.question), return_tensors="pt")
    bigger(**inputs).logits.square().sum().backward()
    layers = bigger.model.language_model.layers
    assert layers[1].self_attn.o_proj.weight.grad.abs().sum() > 0  # a zeroed output still gets a gradient
    assert layers[1].mlp.down_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("options, message", [
    (["--text-insert", "2"], "expected LAYER:COUNT"),
    (["--text-insert", "2:1"], "decoder: layer 2: it has layers 0 to 1"),
    (["--vision-layers", "0"], "vision tower: 0 layers asked for, fewer than its 1 (growing cannot remove layers)"),
    ([], "nothing to grow"),
    (["--text-insert", "1:0"], "nothing to grow"),
])
def test_an_impossible_growth_gives_one_clear_line(source, tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as exc:
        G.main([str(source), str(tmp_path / "out"), *options])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_grow_writes_only_into_a_new_folder_from_a_real_model(source, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    before = (source / "model.safetensors").read_bytes()
    for src, out, message in [
        (source, source, "would write into an input"),
        (source, source / "inside", "would write into an input"),
        (source, tmp_path / "full", "already exists and is not an empty directory"),
        (source, tmp_path / "full" / "notes.txt", "already exists"),
        (tmp_path / "missing", tmp_path / "out", "SOURCE " + str(tmp_path / "missing") + ": no such folder"),
        (tmp_path / "broken", tmp_path / "out", "its config.json is not a JSON object"),
    ]:
        with pytest.raises(SystemExit) as exc:
            G.main([str(src), str(out), "--text-insert", "0:1"])
        text = capsys.readouterr().err + (exc.value.code if isinstance(exc.value.code, str) else "")
        assert message in text and "Traceback" not in text, text
    assert (source / "model.safetensors").read_bytes() == before and not (source / "inside").exists()
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and not (tmp_path / "out").exists()
