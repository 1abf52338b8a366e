"""The generic path: a class without an adapter (PaliGemma here) loads, and a layout dualview cannot
place becomes a strip in token order, flagged not spatial, on which scores, selection, pruning and
answers still work (pruning against the masked reference of test_pruning)."""

import json

import pytest
import torch

import dualview
from dualview.engine.adapters import GenericAdapter
from dualview.engine.session import Session
from dualview.errors import DualviewError
from dualview.methods import get_method
from tests.engine.test_pruning import dropped_positions, masked_greedy, masked_logits
from tests.engine_tiny import PROMPT, gradient_image, tiny_session

IMAGE = gradient_image(100, 72)


def test_a_class_without_an_adapter_loads_through_the_generic_path_with_its_stated_grid():
    session = tiny_session("paligemma")
    assert session.family == "generic" and type(session.model).__name__ == "PaliGemmaForConditionalGeneration"
    geometry = session.prepare(IMAGE, PROMPT).geometry
    assert geometry.spatial and geometry.note == ""
    assert geometry.views == [("image", (4, 4))]  # SigLIP 56 / 14, the whole image resized


@pytest.fixture(scope="module")
def strip_session():
    """LLaVA-NeXT driven by the generic adapter: its AnyRes slots (crops and newlines) are no square grid."""
    known = tiny_session("llava_next")
    return Session("generic llava-next", known.model, known.processor, GenericAdapter(known.model, known.processor))


def test_an_unknown_layout_is_a_strip_in_token_order_flagged_not_spatial(strip_session):
    prepared = strip_session.prepare(IMAGE, PROMPT)
    geometry = prepared.geometry
    slots = int((prepared.input_ids == strip_session.model.config.image_token_id).sum())
    assert geometry.num_visual == slots and bool(geometry.is_visual.all())
    assert not geometry.spatial and "token order" in geometry.note and geometry.note.endswith(".")
    assert geometry.views == [("tokens (not spatial)", (1, slots))]
    assert torch.equal(geometry.view_indices(0), torch.arange(slots))
    edges = geometry.boxes[:, [0, 2]]
    assert float(edges[0, 0]) == 0.0 and float(edges[-1, 1]) == pytest.approx(100.0)
    assert torch.allclose(edges[1:, 0], edges[:-1, 1])  # adjacent slices, left to right
    assert bool((geometry.boxes[:, 1] == 0).all() and (geometry.boxes[:, 3] == 72).all())
    assert geometry.to_dict()["spatial"] is False and geometry.to_dict()["note"] == geometry.note


def test_scores_selection_pruning_and_answers_work_on_a_strip(strip_session):
    prepared = strip_session.prepare(IMAGE, PROMPT)
    analysis = strip_session.analyze(prepared)
    kept = get_method("iwp").select(analysis, 0.3).kept
    layer = analysis.layer
    dropped = dropped_positions(prepared, kept)
    logits, positions = strip_session.logits(prepared, keep=kept, layer=layer)
    reference = masked_logits(strip_session, prepared.inputs, dropped, layer)[positions]
    assert (logits - reference).abs().max() <= 1e-5
    fused = strip_session.answer(prepared, method=get_method("iwp"), budget=0.3, max_new_tokens=4)
    assert fused.kept == kept.tolist()
    assert fused.token_ids == masked_greedy(strip_session, prepared, dropped, layer, 4)


def test_model_errors_name_the_supported_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(DualviewError) as error:
        dualview.load(str(tmp_path), device="cpu")
    for name in ("LLaVA-1.5", "LLaVA-NeXT", "LLaVA-OneVision", "Qwen2-VL", "Qwen2.5-VL", "Qwen3-VL", "Idefics3",
                 "SmolVLM", "Gemma 3", "InternVL", "generic path"):
        assert name in str(error.value)


def test_the_cli_says_when_the_map_is_not_spatial(strip_session, capsys):
    from dualview.cli import _print_text

    analysis = strip_session.analyze(strip_session.prepare(IMAGE, PROMPT))
    result = {"settings": {"analysis_layer": analysis.layer}, "model": {"name": "m"},
              "magnitude": analysis.magnitude.tolist(), "geometry": analysis.geometry.to_dict()}
    _print_text("analyze", result)
    assert f"note: {analysis.geometry.note}" in capsys.readouterr().out
    result["geometry"] = tiny_session("paligemma").prepare(IMAGE, PROMPT).geometry.to_dict()
    _print_text("analyze", result)
    assert "note:" not in capsys.readouterr().out
