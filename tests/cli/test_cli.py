"""The command line: JSON structure, one-line errors with exit status 2, a --help without torch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from dualview import cli, dual_form
from tests.engine_tiny import PROMPT, analysis_of, gradient_image, tiny_dir, tiny_session

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "image.png"
    gradient_image(80, 60).save(path)
    return str(path)


def run_in_process(argv, capsys):
    capsys.readouterr()  # drop what building the tiny model printed
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_answer_json(image_path, capsys):
    model = tiny_dir("llava_next")
    code, out, err = run_in_process(["answer", "--model", model, "--image", image_path, "--prompt", PROMPT,
                                     "--method", "iwp", "--budget", "0.25", "--max-new-tokens", "3", "--json"], capsys)
    assert code == 0 and err == ""
    result = json.loads(out)
    assert set(result) >= {"version", "model", "settings", "full_answer", "pruned_answer", "kept", "rounds",
                           "weight_error", "effective_rank", "attention_error", "full_answer_logprob"}
    settings = result["settings"]
    assert settings["method"] == "iwp" and settings["prune_layer"] == settings["analysis_layer"] == 1
    assert len(result["kept"]) == settings["kept_count"] == round(0.25 * settings["visual_tokens"])
    assert [i for chunk in result["rounds"] for i in chunk] == result["kept"]
    assert [len(chunk) for chunk in result["rounds"]][:2] == [2, 4]
    for answer in ("full_answer", "pruned_answer"):
        assert set(result[answer]) >= {"text", "token_ids", "prefill_seconds", "total_seconds"}
        assert len(result[answer]["token_ids"]) <= 3
    assert result["pruned_answer"]["kept_tokens"] == result["full_answer"]["prompt_tokens"] - (
        settings["visual_tokens"] - settings["kept_count"])
    assert 0.0 < result["weight_error"] < 1.0
    analysis = analysis_of(tiny_session("llava_next"), Image.open(image_path))
    assert result["visual_weight_error"] == pytest.approx(dual_form.weight_error(
        analysis.visual_keys, analysis.visual_values, torch.tensor(result["kept"])), rel=1e-6)


def test_answer_random_uses_the_seed_and_analyze_json(image_path, capsys):
    model = tiny_dir("qwen2_vl")
    base = ["answer", "--model", model, "--image", image_path, "--prompt", PROMPT, "--method", "random",
            "--budget", "4", "--max-new-tokens", "1", "--json"]
    kept = [json.loads(run_in_process(base + ["--param", f"seed={s}"], capsys)[1])["kept"] for s in (0, 0, 5)]
    assert kept[0] == kept[1] != kept[2]
    code, out, _ = run_in_process(["analyze", "--model", model, "--image", image_path, "--prompt", PROMPT,
                                   "--json"], capsys)
    result = json.loads(out)
    n = len(result["visual_positions"])
    assert code == 0 and n > 0
    for key in ("magnitude", "kernel_logit", "value_norm", "token_duplication", "attention_received"):
        assert len(result[key]) == n
    assert len(result["geometry"]["boxes"]) == n


@pytest.mark.parametrize("argv, message", [
    (["answer", "--image", "IMAGE", "--prompt", "x", "--model", "/no/such/dir"], "No model directory"),
    (["answer", "--image", "/no/such.png", "--prompt", "x", "--model", "MODEL"], "No image file"),
    (["answer", "--image", "IMAGE", "--prompt", "x", "--model", "MODEL", "--method", "nope"], "Unknown method"),
    (["answer", "--image", "IMAGE", "--prompt", "x", "--model", "MODEL", "--budget", "2.5"], "Budget"),
    (["answer", "--image", "IMAGE", "--prompt", "x", "--model", "MODEL", "--layer", "9"], "pruning layer must be a whole number from 0 to 3"),
    (["answer", "--image", "IMAGE", "--prompt", "x", "--model", "MODEL", "--param", "lam"], "NAME=VALUE"),
    (["answer", "--image", "IMAGE"], "required"),
])
def test_errors_are_one_line_with_status_2(argv, message, image_path, capsys):
    argv = [image_path if a == "IMAGE" else tiny_dir("qwen2_vl") if a == "MODEL" else a for a in argv]
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_module_entry_point_and_light_help(image_path):
    probe = ("import sys; from dualview import cli\n"
             "try:\n    cli.main(['answer', '--help'])\nexcept SystemExit:\n    pass\n"
             "print('TORCH' if 'torch' in sys.modules else 'LIGHT')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert "--budget" in out.stdout and out.stdout.strip().endswith("LIGHT")
    done = subprocess.run([sys.executable, "-m", "dualview", "analyze", "--model", "/no/such/dir", "--image",
                           image_path, "--prompt", "x"], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.startswith("dualview: error: No model directory")
