"""The shipped built-in model loads offline from assets/ and answers held-out questions."""

import json

import pytest
import torch

from dualview.shapes import world
from dualview.shapes.evaluate import run_eval
from dualview.shapes.model import BUILTIN_DIR, VOCAB, load_builtin

# Regression guard on a fixed 100-question held-out set (seed never used in training).
# Issue 3 set the bound at 0.90 and issue 19 raises it with the shipped weights, so a broken
# export, tokenizer or processor, or a weaker model, fails the test. With stage 28 the two
# closest correct answers win by logit margins of 0.11 and 0.55 (the smallest top-1 minus top-2
# over the answer's greedy steps), still far above fp32 differences between CPUs (about 1e-5).
# Stage 28 measures 0.97 on this set, exactly the bound, so one more wrong answer fails the test
# (97.30 % on 2000 held-out questions; stage 12: 0.98, 97.6 %; stage 11: 0.98, 97.25 %; stage 10:
# 0.96, 96.50 %; stage 9: 0.97, 96.55 %; stage 8: 0.99, 96.1 %; stage 7: 0.97, 95.35 %; stage 5:
# 0.91, 95.1 %)
MIN_ACCURACY_100 = 0.97  # the regression guard (issues 3 and 19), raised with stage 12, held by stage 28
HELDOUT_SEED = 777


@pytest.fixture(scope="module")
def builtin():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_builtin()


def test_shipped_files():
    names = {p.name for p in BUILTIN_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "README.md"} <= names
    total = sum(p.stat().st_size for p in BUILTIN_DIR.rglob("*") if p.is_file())
    assert total < 60e6
    cfg = json.loads((BUILTIN_DIR / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["vision_config"]["model_type"] == "siglip_vision_model"
    assert cfg["vision_feature_select_strategy"] == "full"
    text = cfg["text_config"]
    assert text["model_type"] == "llama" and text["num_hidden_layers"] >= 8
    assert text["num_key_value_heads"] < text["num_attention_heads"]  # grouped-query attention


def test_loads_offline(builtin):
    model, processor = builtin
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert next(model.parameters()).dtype == torch.float32
    s = world.sample_from_seed(1)
    inputs = processor(images=s.image, text="<image>" + s.question, return_tensors="pt")
    assert int((inputs["input_ids"] == VOCAB["<image>"]).sum()) == 196


def test_heldout_accuracy(builtin):
    model, processor = builtin
    res = run_eval(model, processor, world.heldout_set(100, HELDOUT_SEED))
    assert res["accuracy"]["overall"] >= MIN_ACCURACY_100, res["accuracy"]


def test_the_apps_loader_answers_like_the_model(builtin):
    """dualview.load("builtin") (what the app and CLI use) gives the same answers as the model itself."""
    import dualview
    from dualview.shapes.model import answer

    model, processor = builtin
    session = dualview.load("builtin", device="cpu")
    assert session.num_layers >= 8 and session.adapter.family == "llava"
    for s in world.heldout_set(8, HELDOUT_SEED):
        assert session.answer(session.prepare(s.image, s.question)).text == answer(model, processor, s.image, s.question)
