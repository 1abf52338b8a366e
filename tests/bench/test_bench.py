"""The benchmark suites' --quick runs on a tiny shapes-world model: structure, sanity, exact budgets,
the full-token answers against the evaluation code, and the statistics and FLOP counts against
independent references."""

import json
import math

import numpy as np
import pytest
import torch

from dualview.bench import accuracy, common, error, prefill, readme
from dualview.budget import resolve_budget
from dualview.shapes import world
from dualview.shapes.evaluate import run_eval
from dualview.shapes.model import TINY, answer, build_model, load_builtin, normalize_answer
from dualview.shapes.train import export


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """TINY shapes-world model (16 visual tokens, 2 decoder layers) whose matrices are scaled up so
    that its greedy answers depend on the image (at the default init it always answers nothing)."""
    model = build_model(TINY, seed=0).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(8)
    return str(export(model, tmp_path_factory.mktemp("tiny-shapes"), TINY, dtype="float32"))


def run_suite(module, model, out, *extra):
    module.main(["--model", model, "--quick", "--out", str(out), "--threads", "1", *extra])
    return json.loads((out / f"{module.__name__.rsplit('.', 1)[1]}-quick.json").read_text())


def test_accuracy_quick(tiny_model, tmp_path):
    record = run_suite(accuracy, tiny_model, tmp_path)
    rows, n = record["rows"], record["n"]
    assert n == 3 and record["num_visual"] == 16
    for ext in ("csv", "json", "md"):
        assert (tmp_path / f"accuracy-quick.{ext}").stat().st_size > 0
    assert (tmp_path / "accuracy-quick-curve.html").stat().st_size > 0
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["agreement"] <= 1.0 for r in rows)
    # full-token answers are the evaluation code's answers on the same questions
    model, processor = load_builtin(tiny_model)
    samples = world.heldout_set(n, common.HELDOUT_SEED, TINY.image_size)
    assert [q["question"] for q in record["questions"]] == [s.question for s in samples]
    assert [q["full"] for q in record["questions"]] == \
        [normalize_answer(answer(model, processor, s.image, s.question)) for s in samples]
    assert any(q["full"] for q in record["questions"])  # the check above compares real answers
    assert record["full_accuracy"]["overall"] == run_eval(model, processor, samples)["accuracy"]["overall"]
    # every method at every paper budget, with the exact token count
    main = {(r["method"], r["budget"]): r for r in rows if r["group"] == "main"}
    for method in common.MAIN_METHODS:
        for budget in common.PAPER_BUDGETS:
            assert main[method, budget]["kept_tokens"] == resolve_budget(budget, 16)
        assert main[method, 1.0]["accuracy"] == record["full_accuracy"]["overall"]
    assert record["prune_layers"] == {"iwp": 1, "iwp-magnitude": 1, "mmr": 1, "fastv": 1, "divprune": 0,
                                      "cdpruner": 0, "random": 1, "grid": 1}
    ablations = {(r["setting"], str(r["value"]), r["budget"]): r for r in rows if r["group"] == "ablation"}
    for budget in accuracy.ABLATION_BUDGETS:
        assert {v for s, v, b in ablations if s == "layer" and b == budget} == {"0", "1"}
        assert ablations["lambda", "5.0", budget]["accuracy"] == main["iwp", budget]["accuracy"]
        assert {v for s, v, b in ablations if s == "b0" and b == budget} == {"1", "2", "8", "64"}
        assert len([1 for s, v, b in ablations if s == "rope" and b == budget]) == 3
    for budget in common.PAPER_BUDGETS:  # the query rows, at every paper budget
        assert {v for s, v, b in ablations if s == "query" and b == budget} == {"text", "last", "all"}
        assert ablations["query", "text", budget]["accuracy"] == main["iwp", budget]["accuracy"]
        assert ablations["query", "text", budget]["evidence_recall"] == main["iwp", budget]["evidence_recall"]
    # evidence recall: every token kept holds every evidence patch; kept sets hold a share of them
    full = next(r for r in rows if r["group"] == "full")
    assert full["evidence_recall"] == 1.0 and all(main[m, 1.0]["evidence_recall"] == 1.0 for m in common.MAIN_METHODS)
    assert all(0.0 <= r["evidence_recall"] <= 1.0 for r in rows)
    assert any(r["evidence_recall"] < 1.0 for r in rows)
    assert "Evidence recall" in (tmp_path / "accuracy-quick.md").read_text()


def test_error_quick(tiny_model, tmp_path):
    record = run_suite(error, tiny_model, tmp_path)
    rows, records = record["rows"], record["records"]
    for name in ("error-quick.csv", "error-quick.md", "error-quick-curves.html"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(records) == 3 * len(common.MAIN_METHODS) * len(common.PAPER_BUDGETS)
    for r in records:
        assert 0.0 <= r["weight_error"] <= 1.0 + 1e-9 and r["attention_error"] >= 0.0
        assert 1.0 - 1e-6 <= r["effective_rank"] <= TINY.text_hidden // TINY.text_heads + 1e-6
        assert r["kept_tokens"] == resolve_budget(r["budget"], 16)
        assert r["flip"] == (r["answer"] != r["full"])
        assert 0.0 < r["kept_mass"] < 1.0 and r["dropped_mass"] == 1.0 - r["kept_mass"]
        assert r["dropped_part"] > 0.0 and r["normaliser_part"] > 0.0
    for row in rows:
        mine = [r for r in records if r["method"] == row["method"] and r["budget"] == row["budget"]]
        assert math.isclose(row["mean_weight_error"], np.mean([r["weight_error"] for r in mine]))
        assert math.isclose(row["mean_kept_mass"], np.mean([r["kept_mass"] for r in mine]))
        assert row["flip_rate"] == np.mean([r["flip"] for r in mine])
    assert any(r["flip"] for r in records) and not all(r["flip"] for r in records)
    for name in ("weight_error", "attention_error", "dropped_mass", "dropped_part", "normaliser_part"):
        pooled = [a for a in record["associations"] if a["budget"] == "all" and a["measure"] == name][0]
        assert pooled["cases"] == len(records) and pooled["auc"] is not None
        assert pooled["auc"] == error.flip_association([r[name] for r in records], [r["flip"] for r in records])["auc"]
    assert "normaliser part" in (tmp_path / "error-quick.md").read_text()


def test_flip_association_matches_references():
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=60), 1)  # rounding makes ties
    y = rng.random(60) < 0.4
    result = error.flip_association(x, y)
    pos, neg = x[y], x[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert math.isclose(result["auc"], pairs)
    # point-biserial from its textbook formula
    p = y.mean()
    r = (pos.mean() - neg.mean()) / x.std() * math.sqrt(p * (1 - p))
    assert math.isclose(result["point_biserial"], r)
    assert error.flip_association(x, np.zeros(60, bool))["auc"] is None


def test_decoder_layer_flops_match_torch_counter():
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, num_hidden_layers=1, vocab_size=50)
    config._attn_implementation = "eager"
    layer, length = LlamaDecoderLayer(config, 0).eval(), 24
    x = torch.randn(1, length, 64)
    position_embeddings = LlamaRotaryEmbedding(config)(x, torch.arange(length)[None])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        layer(x, attention_mask=None, position_embeddings=position_embeddings)
    # the counter charges the full S x S score matrix; the bound counts the causal half
    full_square = 2 * 2 * length * length * 4 * 16
    assert counter.get_total_flops() == prefill.decoder_layer_flops(config, length) + full_square // 2


def test_prefill_quick(tiny_model, tmp_path):
    record = run_suite(prefill, tiny_model, tmp_path)
    rows = record["rows"]
    assert (tmp_path / "prefill-quick.csv").exists() and "| full |" in (tmp_path / "prefill-quick.md").read_text()
    assert rows[0]["method"] == "full" and rows[0]["flop_bound"] == 1.0
    assert len(rows) == 1 + len(common.MAIN_METHODS) * len(common.PAPER_BUDGETS)
    for r in rows[1:]:
        assert r["kept_tokens"] == resolve_budget(r["budget"], 16)
        assert r["flop_bound"] > 1.0 and r["prefill_ms"] > 0 and r["total_ms"] >= r["prefill_ms"]
    by = {(r["method"], r["budget"]): r["flop_bound"] for r in rows}
    assert by["divprune", 0.111] > by["iwp", 0.111] > by["iwp", 0.353]  # earlier layer, fewer tokens: larger bound


def test_random_llava_session_prunes_with_the_gpu_path_code():
    """The --shape path (random LLaVA-1.5-style model, 336 px, 576 visual tokens) with small widths on CPU."""
    shape = {"text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                          num_key_value_heads=2),
             "vision": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)}
    session = prefill.random_llava_session("cpu", shape, dtype=torch.float32)
    sample = prefill.random_samples(1, 0)[0]
    from dualview.methods import get_method

    prepared = session.prepare(sample.image, sample.question)
    analysis = session.analyze(prepared)
    assert analysis.num_visual == 576
    times = prefill.timed_runs(session, [prepared], {"full": [(None, None)],
                                                     "iwp": [(get_method("iwp").select(analysis, 0.111).kept, analysis.layer)]},
                               repeats=1, max_new_tokens=2)
    assert all(len(t["prefill"]) == 1 and t["new_tokens"][0] >= 1 for t in times.values())


def test_bad_model_is_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        accuracy.main(["--model", str(tmp_path / "missing"), "--quick", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error:") and "\n" not in message and "Traceback" not in message


def test_readme_replaces_only_the_marked_block(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "error.md").write_text("| new | table |\n")
    (results / "error-curves.png").write_bytes(b"png")
    page = tmp_path / "README.md"
    page.write_text("# x\nintro\n<!-- bench:error -->\nold\n<!-- /bench:error -->\nafter\n"
                    "<!-- bench:prefill -->\nkept\n<!-- /bench:prefill -->\n")
    assert readme.update(page, results) == ["error"]
    assert page.read_text() == ("# x\nintro\n<!-- bench:error -->\n| new | table |\n\n![error](results/error-curves.png)"
                                "\n\nInteractive: `results/error-curves.html`.\n<!-- /bench:error -->\nafter\n"
                                "<!-- bench:prefill -->\nkept\n<!-- /bench:prefill -->\n")


def test_a_record_says_when_the_weights_differ_from_their_commit(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    assert common.directory_commit(tmp_path) is None  # not a git checkout
    git("init", "-q")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"a")
    git("add", ".")
    git("commit", "-qm", "weights")
    clean = common.directory_commit(tmp_path / "model")
    assert clean is not None and not clean.endswith("uncommitted changes") and len(clean.split()) == 2
    (tmp_path / "model" / "model.safetensors").write_bytes(b"b")
    assert common.directory_commit(tmp_path / "model") == clean + " + uncommitted changes"
    (tmp_path / "other.txt").write_text("elsewhere")  # changes outside the directory do not count
    git("checkout", "--", "model")
    assert common.directory_commit(tmp_path / "model") == clean
