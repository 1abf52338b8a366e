"""Models: only safetensors weights are loaded, no remote code anywhere, clear sentences for models
that cannot load (missing, unsupported class, pickled weights, not on disk while offline)."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dualview  # noqa: E402
from dualview.errors import DualviewError  # noqa: E402
from tests.engine_tiny import tiny_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_no_remote_code_anywhere():
    """No source file, test, script or doc turns on trust_remote_code (every form of it)."""
    pattern = re.compile(r"trust_remote_code\s*[=:]\s*(True|1|\"?true)", re.IGNORECASE)
    hits = []
    for path in ROOT.rglob("*"):
        if path.suffix in {".py", ".md", ".toml", ".cfg", ".sh", ".txt", ".json"} and ".git" not in path.parts \
                and "runs" not in path.parts and path.is_file():
            hits += [f"{path.relative_to(ROOT)}" for line in path.read_text(errors="ignore").splitlines()
                     if pattern.search(line)]
    assert hits == []


def test_pickled_weights_are_refused_safetensors_load(tmp_path):
    """A model whose weights are only a pickled pytorch_model.bin is refused (never unpickled)."""
    import torch
    from safetensors.torch import load_file

    source = Path(tiny_dir("llava"))
    assert dualview.load(str(source), device="cpu").num_layers == 4  # the safetensors original loads
    pickled = tmp_path / "pickled"
    shutil.copytree(source, pickled)
    weights = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(weights, pickled / "pytorch_model.bin")
    with pytest.raises(DualviewError, match="Cannot load the weights"):
        dualview.load(str(pickled), device="cpu")


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "No model directory"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "holds no config.json"),
    (lambda d: (d / "gpt2").mkdir() or (d / "gpt2" / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})) and d / "gpt2",
     "GPT2LMHeadModel, which dualview does not support"),
    (lambda d: "some-org/some-model-not-on-disk", "downloads are off"),
])
def test_models_that_cannot_load_say_why(tmp_path, make, message):
    with pytest.raises(DualviewError, match=message):
        dualview.load(str(make(tmp_path)), device="cpu")


def test_a_prompt_beyond_the_models_positions_is_refused_before_the_forward_pass():
    """2000 characters pass the validator, but '€' is 3 byte tokens each: 6000 > 4096 positions."""
    from tests.engine_tiny import gradient_image

    session = dualview.load(tiny_dir("llava"), device="cpu")
    assert session.max_length == 4096
    with pytest.raises(DualviewError, match=r"make \d+ tokens, more than this model's limit of 4096"):
        session.prepare(gradient_image(80, 60), "€" * 2000)
    assert session.prepare(gradient_image(80, 60), "€" * 1000).num_visual > 0
