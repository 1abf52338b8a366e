"""``python -m dualview sweep``: end to end at a real token count, the shipped examples on the
built-in model, files = stdout JSON, one-line errors with exit status 2, a light --help."""

import csv
import json
import os
import subprocess
import sys

import pytest

from dualview import cli, sweep
from dualview.engine.loading import BUILTIN_DIR
from tests.engine_tiny import gradient_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
HAS_BUILTIN = (BUILTIN_DIR / "config.json").is_file()


def run(argv, capsys):
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """LLaVA-OneVision's public 7B geometry at tiny widths (7 209 visual tokens for 1920 × 1080)
    and a folder with one such image and its prompts file."""
    from dualview.engine.tiny import build_tiny

    root = tmp_path_factory.mktemp("sweep-real")
    model = build_tiny("llava_onevision", root / "ov", geometry="real")
    images = root / "images"
    images.mkdir()
    gradient_image(1920, 1080).save(images / "wide.png")
    (images / "prompts.json").write_text(json.dumps([{"image": "wide.png", "prompt": "what color is the circle?"}]))
    return {"model": str(model), "images": images, "root": root}


def test_sweep_at_seven_thousand_tokens_writes_csv_and_json_equal_to_stdout(real, capsys):
    out_dir = real["root"] / "out"
    code, out, err = run(["sweep", "--images", str(real["images"]), "--model", real["model"], "--methods", "iwp,random",
                          "--budgets", "1%", "--seeds", "3", "--max-new-tokens", "1", "--param", "query=last",
                          "--out", str(out_dir), "--json"], capsys)
    assert code == 0 and err == ""
    printed = json.loads(out)
    assert printed == json.loads((out_dir / "sweep.json").read_text())
    rows = printed["rows"]
    assert [(r["method"], r["seed"]) for r in rows] == [("iwp", None), ("random", 3)]
    visual = rows[0]["visual_tokens"]
    assert visual == 7209 and all(r["kept"] == round(0.01 * visual) for r in rows)
    assert rows[0]["kept_digest"] != rows[1]["kept_digest"] and rows[0]["full_answer"] == rows[1]["full_answer"]
    assert printed["settings"]["params"] == {"iwp": {"b0": 2, "growth": 2, "lam": 5.0, "query": "last"},
                                             "random": {}}
    assert all(0.0 <= r["kept_mass"] <= 1.0 and 0.0 < r["weight_error"] < 1.0 for r in rows)
    with open(out_dir / "sweep.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(t["method"], t["seed"], t["pruned_answer"], float(t["pruned_logprob"])) for t in table] == \
        [(r["method"], "" if r["seed"] is None else str(r["seed"]), r["pruned_answer"], r["pruned_logprob"]) for r in rows]


@pytest.mark.skipif(not HAS_BUILTIN, reason="the built-in model is not in this checkout")
def test_sweep_of_the_shipped_examples_prints_the_flip_table_and_the_accuracy(capsys):
    from dualview.app.examples import load_examples

    code, out, err = run(["sweep", "--examples", "--methods", "iwp,random", "--budgets", "11.1%", "--seeds", "0",
                          "--max-new-tokens", "4"], capsys)
    assert code == 0 and err == ""
    examples = load_examples()
    lines = out.splitlines()
    assert lines[0].startswith(f"flip rate: share of answers that differ from the full answer ({len(examples)} items")
    assert lines[1].split() == ["method", "11.1%"] and lines[2].split()[0] == "iwp"
    assert lines[3].startswith("random (1 seed)") and "accuracy of the full answers" in out
    assert out.rstrip().endswith("note: iwp has no seed: run once per budget; the seeds 0 apply to random.")


@pytest.mark.parametrize("extra, message", [
    (["--images", "IMAGES", "--prompts", "/no/such.csv"], "No prompts file at '/no/such.csv'"),
    (["--images", "/no/such/dir"], "No image folder at '/no/such/dir'"),
    (["--images", "IMAGES", "--prompts", "PROMPTS:image,prompt\nmissing.png,what?\n"],
     "names the image 'missing.png', which is not in the folder"),
    (["--images", "IMAGES", "--prompts", "PROMPTS:image,prompt\n"], "has no rows"),
    (["--images", "IMAGES", "--prompts", "PROMPTS:image,prompt\nbroken.png,what?\n"],
     "Item 'broken.png': 'broken.png' is not a readable image"),
    (["--examples", "--methods", "iwp,nope"], "Unknown method 'nope'"),
    (["--examples", "--budgets", "35.3%,250%"], "keeps more than all visual tokens"),
    (["--examples", "--seeds", "0,x"], "random's seed (seed of the random draw) must be a whole number"),
    (["--examples", "--param", "seed=4"], "give the seeds with --seeds"),
    (["--examples", "--param", "trade=0.2"], "No swept method has a parameter 'trade'"),
    (["--examples", "--layer", "x"], "pruning layer must be a whole number"),
    (["--examples", "--methods", "iwp,fastv,divprune,random", "--budgets", "1,2,3,4,5,6,7,8,9,10",
      "--seeds", ",".join(map(str, range(30)))], "8 items × 330 runs = 2640 pruned answers, more than the limit of 2000"),
    (["--examples", "--images", "IMAGES"], "not allowed with argument"),
    ([], "one of the arguments --examples --images is required"),
])
def test_bad_input_is_one_line_and_exit_status_2(real, extra, message, capsys, tmp_path):
    (real["images"] / "broken.png").write_bytes(b"not an image")
    argv = []
    for value in extra:
        if value.startswith("PROMPTS:"):
            (tmp_path / "p.csv").write_text(value[len("PROMPTS:"):])
            value = str(tmp_path / "p.csv")
        argv.append(value.replace("IMAGES", str(real["images"])))
    try:
        code, out, err = run(["sweep", *argv, "--model", real["model"]], capsys)
    except SystemExit as exit_:  # argparse's own errors
        code, (out, err) = exit_.code, capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_sweep_help_is_light_and_states_the_limit():
    probe = ("import sys; from dualview import cli\n"
             "try:\n    cli.main(['sweep', '--help'])\nexcept SystemExit:\n    pass\n"
             "print('TORCH' if 'torch' in sys.modules else 'LIGHT')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, cwd=ROOT).stdout
    assert out.strip().endswith("LIGHT") and "--seeds" in out and f"At most {sweep.MAX_RUNS}" in " ".join(out.split())


def test_no_examples_is_one_sentence_before_the_model_loads(monkeypatch, capsys):
    import dualview
    from dualview.app import examples

    monkeypatch.setattr(examples, "EXAMPLES_DIR", examples.EXAMPLES_DIR / "no-such-folder")
    monkeypatch.setattr(examples.load_examples, "__defaults__", (examples.EXAMPLES_DIR,))
    monkeypatch.setattr(dualview, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    code, out, err = run(["sweep", "--examples"], capsys)
    assert code == 2 and err.strip() == "dualview: error: The sweep has no items; give at least one image and prompt."
