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
    (["restore", "--image", "IMAGE", "--prompt", "x", "--model", "MODEL", "--max-calls", "0"], "from 1 to 512"),
    (["analyze", "--image", "IMAGE", "--prompt", "x", "--model", "MODEL", "--query", "token:x"], "Unknown query choice"),
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
             "for command in ('answer', 'restore'):\n"
             "    try:\n        cli.main([command, '--help'])\n    except SystemExit:\n        pass\n"
             "print('TORCH' if 'torch' in sys.modules else 'LIGHT')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert "--budget" in out.stdout and "--max-calls" in out.stdout and out.stdout.strip().endswith("LIGHT")
    done = subprocess.run([sys.executable, "-m", "dualview", "analyze", "--model", "/no/such/dir", "--image",
                           image_path, "--prompt", "x"], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.startswith("dualview: error: No model directory")


def test_answer_reports_the_kept_mass_and_the_split_of_the_chosen_query(image_path, capsys):
    model = tiny_dir("llava_next")
    code, out, _ = run_in_process(["answer", "--model", model, "--image", image_path, "--prompt", PROMPT,
                                   "--budget", "0.25", "--param", "query=last", "--max-new-tokens", "1", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["settings"]["params"]["query"] == "last"
    analysis = analysis_of(tiny_session("llava_next"), Image.open(image_path))
    split = analysis.attention_split(result["kept"], "last")
    reported = result["attention_split"]
    assert reported["query"] == "last" and reported["query_positions"] == [analysis.prepared.length - 1]
    assert reported["per_head"]["kept_mass"] == split.kept_mass_per_head.tolist()
    assert reported["normaliser_part"] == pytest.approx(float(split.normaliser_error.mean()), rel=1e-12)
    assert 0.0 < reported["kept_mass"] < 1.0 and reported["dropped_part"] > 0.0


def test_analyze_exports_the_attention_views_of_the_chosen_query(image_path, capsys):
    model = tiny_dir("llava_next")
    code, out, _ = run_in_process(["analyze", "--model", model, "--image", image_path, "--prompt", PROMPT,
                                   "--query", "Token:1", "--json"], capsys)
    result = json.loads(out)
    analysis = analysis_of(tiny_session("llava_next"), Image.open(image_path))
    assert code == 0 and result["settings"]["query"] == "token:1"
    assert result["query_positions"] == [int(analysis.prepared.text_positions[1])]
    assert result["magnitude"] == pytest.approx(analysis.magnitude_for("token:1").tolist(), abs=1e-6)
    received, share = analysis.attention_received_by("token:1"), analysis.update_share()
    torch.testing.assert_close(torch.tensor(result["attention_received_by_query_per_head"]), received,
                               rtol=0, atol=1e-8)
    assert result["attention_received_by_query"] == pytest.approx(received.mean(0).tolist(), abs=1e-8)
    assert result["update_share"] == pytest.approx(share.mean(0).tolist(), abs=1e-6)
    torch.testing.assert_close(torch.tensor(result["update_share_per_head"]), share, rtol=0, atol=1e-6)
    code = cli.main(["analyze", "--model", model, "--image", image_path, "--prompt", PROMPT, "--query", "first"])
    assert code == 2 and "Unknown query choice" in capsys.readouterr().err


def test_restore_json_on_a_pruned_answer_that_changes(tmp_path, capsys):
    from dualview.shapes import world
    from dualview.shapes.model import TINY
    from tests.engine_tiny import scaled_shapes_dir

    import dualview

    model = scaled_shapes_dir(12)
    sample = world.heldout_set(4, 12345, TINY.image_size)[3]
    image = tmp_path / "scene.png"
    sample.image.save(image)
    code, out, _ = run_in_process(["restore", "--model", model, "--image", str(image), "--prompt", sample.question,
                                   "--budget", "2", "--max-new-tokens", "1", "--max-calls", "30", "--width", "4",
                                   "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["changed"]  # 2 of 16 tokens change this answer
    assert result["pruned_answer"]["token_ids"] != result["full_answer"]["token_ids"]
    dropped = set(range(16)) - set(result["kept"])
    assert set(result["order"]) <= dropped and len(result["curve"]) == len(result["order"]) + 1
    assert result["calls"] <= 30 and result["curve"][0] == result["pruned_logprob"]
    assert len(result["first_order"]["effect"]) == 16 and "first-order" in result["first_order"]["label"]
    session = dualview.load(model, device="cpu")
    prepared = session.prepare(sample.image, sample.question)
    back = sorted(result["kept"] + result["order"])
    assert result["curve"][-1] == session.answer_logprob(prepared, result["answer_token_ids"], keep=back,
                                                         layer=result["settings"]["prune_layer"])
    regenerated = session.answer(prepared, keep=back, layer=result["settings"]["prune_layer"], max_new_tokens=1)
    assert result["restored"] == (regenerated.token_ids == result["full_answer"]["token_ids"])
