"""dualview.sweep: rows equal separate engine calls, seeds, determinism, summaries, CSV = JSON, errors.

The model is the TINY shapes-world model with its matrices scaled by 8 (tests/engine_tiny.py): its
greedy answers depend on the image, so pruning flips some answers and not others.
"""

import csv
import hashlib
import json
import statistics

import numpy as np
import pytest
from PIL import Image

import dualview
from dualview import sweep
from dualview.answers import same_answer
from dualview.errors import DualviewError
from dualview.methods import get_method
from tests.engine_tiny import gradient_image, scaled_shapes_dir

PROMPTS = [("a.png", "what color is the circle?", "A A is"), ("b.png", "how many objects are there?", ""),
           ("c.jpg", "what letter is written?", "a a a")]  # the model's own answers: right with all tokens on
# a.png and with some kept sets on c.jpg (in another case)
METHODS, BUDGETS, SEEDS = ["iwp", "fastv", "random"], ["25%", "3"], [0, 1, 2]
NEW_TOKENS = 3


@pytest.fixture(scope="module")
def session():
    return dualview.load(scaled_shapes_dir(8), device="cpu")


def write_folder(folder):
    rng = np.random.default_rng(0)
    gradient_image(64, 48).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "b.png")
    Image.fromarray(rng.integers(0, 255, (50, 30, 3), dtype=np.uint8)).save(folder / "c.jpg")
    with open(folder / "prompts.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "prompt", "expected"])
        writer.writerows(PROMPTS)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def swept(session, folder):
    runs, notes = sweep.plan(METHODS, BUDGETS, SEEDS)
    return sweep.run_sweep(session, sweep.items_from_file(folder), runs, max_new_tokens=NEW_TOKENS, notes=notes)


def test_items_from_a_folder_keep_the_file_order_and_the_expected_answers(folder):
    items = sweep.items_from_file(folder)
    assert [(i.name, i.prompt, i.expected) for i in items] == [(n, p, e or None) for n, p, e in PROMPTS]
    assert all(i.image == str((folder / i.name).resolve()) for i in items)
    (folder / "twice.json").write_text(json.dumps([{"image": "a.png", "prompt": "q one"},
                                                   {"image": "a.png", "prompt": "q two", "expected": 3}]))
    twice = sweep.items_from_file(folder, folder / "twice.json")
    assert [(i.name, i.prompt, i.expected) for i in twice] == [("a.png", "q one", None), ("a.png#2", "q two", "3")]


def test_the_plan_runs_seeded_methods_once_per_seed_and_the_others_once(swept):
    runs, notes = sweep.plan(METHODS, BUDGETS, SEEDS)
    assert [(r.method, r.budget, r.seed) for r in runs] == (
        [(m, b, None) for m in ("iwp", "fastv") for b in BUDGETS] + [("random", b, s) for b in BUDGETS for s in SEEDS])
    assert notes == ["iwp, fastv have no seed: run once per budget; the seeds 0, 1, 2 apply to random."]
    assert all(r.params == get_method(r.method).check_params({"seed": r.seed} if r.seed is not None else {})
               for r in runs)
    assert len(swept.rows) == len(swept.kept) == len(PROMPTS) * len(runs) and swept.notes == notes
    unseeded, none_seeded = sweep.plan(["iwp"], ["3"], " ")
    assert none_seeded == ["iwp has no seed: run once per budget."] and [r.seed for r in unseeded] == [None]


def test_rows_equal_separate_engine_calls_on_the_same_kept_sets(session, folder, swept):
    """Every row, recomputed independently: select from a fresh analysis, answer with the kept set
    from the method's layer, score the full answer's ids, measure the kept set."""
    items = {i.name: i for i in sweep.items_from_file(folder)}
    full = {}
    for row, kept in zip(swept.rows, swept.kept):
        item = items[row["item"]]
        prepared = session.prepare(Image.open(item.image), item.prompt)
        analysis = session.analyze(prepared)
        method = get_method(row["method"])
        params = {"seed": row["seed"]} if row["seed"] is not None else {}
        expected_kept = method.select(analysis, row["budget"], **params).kept
        layer = method.prune_layer(analysis)
        assert kept == expected_kept.tolist() and row["kept"] == len(kept) and row["prune_layer"] == layer
        assert row["kept_digest"] == hashlib.sha256(",".join(map(str, sorted(kept))).encode()).hexdigest()[:12]
        if row["item"] not in full:
            full[row["item"]] = session.answer(prepared, max_new_tokens=NEW_TOKENS)
        answer = full[row["item"]]
        pruned = session.answer(prepared, keep=expected_kept, layer=layer, max_new_tokens=NEW_TOKENS)
        ids = session.answer_ids(answer)
        assert row["full_answer"] == answer.text and row["pruned_answer"] == pruned.text
        assert row["flipped"] == (pruned.text.lower() != answer.text.lower())
        assert row["correct"] == (None if item.expected is None else pruned.text.lower() == item.expected.lower())
        assert row["full_logprob"] == pytest.approx(session.answer_logprob(prepared, ids), abs=1e-4)
        assert row["pruned_logprob"] == pytest.approx(
            session.answer_logprob(prepared, ids, keep=expected_kept, layer=layer), abs=1e-4)
        assert row["logprob_drop"] == pytest.approx(row["full_logprob"] - row["pruned_logprob"], abs=2e-6)
        assert row["weight_error"] == pytest.approx(analysis.weight_error(expected_kept), abs=1e-6)
        assert row["kept_mass"] == pytest.approx(analysis.attention_split(expected_kept).kept_mass_per_head.mean().item(),
                                                 abs=1e-6)
        assert row["visual_tokens"] == analysis.num_visual
    assert {r["flipped"] for r in swept.rows} == {True, False}, "the fixture should show flips and non-flips"
    assert {r["correct"] for r in swept.rows} == {True, False, None}
    assert {r["full_correct"] for r in swept.rows} == {True, False, None}


def test_random_seeds_draw_different_sets_and_a_repeated_seed_repeats_everything(session, folder, swept):
    random_rows = [(r, k) for r, k in zip(swept.rows, swept.kept) if r["method"] == "random"]
    for item in {r["item"] for r, _ in random_rows}:
        for budget in BUDGETS:
            sets = [tuple(sorted(k)) for r, k in random_rows if r["item"] == item and r["budget"] == budget]
            assert len(sets) == len(SEEDS) == len(set(sets))
    runs, _ = sweep.plan(["random", "iwp"], BUDGETS, [2, 0])
    again = sweep.run_sweep(session, sweep.items_from_file(folder), runs, max_new_tokens=NEW_TOKENS)
    first = {(r["item"], r["method"], r["budget"], r["seed"]): (r, k) for r, k in zip(swept.rows, swept.kept)}
    for row, kept in zip(again.rows, again.kept):
        assert first[row["item"], row["method"], row["budget"], row["seed"]] == (row, kept)


def test_summaries_follow_from_the_rows(swept):
    for entry in swept.flip_table():
        rows = [r for r in swept.rows if (r["method"], r["budget"]) == (entry["method"], entry["budget"])]
        assert entry["answers"] == len(rows) and entry["flips"] == sum(r["flipped"] for r in rows)
        assert entry["flip_rate"] == pytest.approx(statistics.mean(r["flipped"] for r in rows))
        judged = [r["correct"] for r in rows if r["correct"] is not None]
        assert entry["accuracy"] == pytest.approx(statistics.mean(judged))
        if entry["method"] == "random":
            per_seed = [statistics.mean(r["flipped"] for r in rows if r["seed"] == s) for s in SEEDS]
            assert entry["seeds"] == len(SEEDS)
            assert entry["flip_sd"] == pytest.approx(statistics.pstdev(per_seed))
            assert (entry["flip_min"], entry["flip_max"]) == (min(per_seed), max(per_seed))
        else:
            assert entry["seeds"] is entry["flip_sd"] is entry["flip_min"] is None
    for entry in swept.item_flips():
        for method in METHODS:
            rows = [r for r in swept.rows if r["item"] == entry["item"] and r["method"] == method]
            flipped = [b for b in BUDGETS if any(r["flipped"] for r in rows if r["budget"] == b)]
            assert [c["budget"] for c in entry["flips"].get(method, [])] == flipped
            for cell in entry["flips"].get(method, []):
                assert cell["seeds_flipped"] == sum(r["flipped"] for r in rows if r["budget"] == cell["budget"])
    headers, lines = swept.summary_cells()
    assert headers == ["method"] + BUDGETS and [line[0] for line in lines] == ["iwp", "fastv", "random (3 seeds)"]
    text = swept.text()
    assert all(cell in text for line in lines for cell in line) and swept.notes[0] in text


def test_csv_and_json_agree(swept, tmp_path):
    paths = swept.write(tmp_path)
    assert [p.split("/")[-1] for p in paths] == ["sweep.csv", "sweep-summary.csv", "sweep.json"]
    data = json.loads((tmp_path / "sweep.json").read_text())
    with open(tmp_path / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(tmp_path / "sweep-summary.csv", newline="") as handle:
        summary = list(csv.DictReader(handle))

    def same(text, value):
        if value is None:
            return text == ""
        if isinstance(value, bool):
            return text == str(value)
        if isinstance(value, (int, float)):
            return float(text) == value
        return text == value

    assert len(rows) == len(data["rows"]) == len(swept.rows) and list(rows[0]) == list(sweep.COLUMNS)
    assert all(same(c[key], j[key]) for c, j in zip(rows, data["rows"]) for key in sweep.COLUMNS)
    assert data["rows"] == swept.rows and data["summary"] == swept.flip_table()
    assert all(same(c[key], j[key]) for c, j in zip(summary, data["summary"]) for key in j)
    assert data["settings"]["seeds"] == SEEDS and data["settings"]["methods"] == METHODS
    assert data["item_flips"] == swept.item_flips() and data["notes"] == swept.notes


def test_same_answer_ignores_case_and_spacing_only():
    assert same_answer(" Red  car", "red car") and not same_answer("red", "blue")


@pytest.mark.parametrize("call, message", [
    (lambda f: sweep.items_from_file(f / "nowhere"), "No image folder at"),
    (lambda f: sweep.items_from_file(f, f / "missing.csv"), "No prompts file at"),
    (lambda f: sweep.items_from_file(f / "empty"), "has no prompts.csv or prompts.json"),
    (lambda f: sweep.items_from_file(f, f / "other.csv"), "Row 2 of 'other.csv' names the image 'zz.png', which is not in"),
    (lambda f: sweep.items_from_file(f, f / "escape.csv"), "names the image '../a.png', which is not in the folder"),
    (lambda f: sweep.items_from_file(f, f / "header.csv"), "needs a header row with the columns image, prompt"),
    (lambda f: sweep.items_from_file(f, f / "blank.csv"), "Row 1 of 'blank.csv' needs an image file name and a prompt"),
    (lambda f: sweep.items_from_file(f, f / "none.csv"), "has no rows"),
    (lambda f: sweep.items_from_file(f, f / "bad.json"), "is not valid JSON"),
    (lambda f: sweep.items_from_file(f, f / "dict.json"), "must hold a JSON list of objects"),
    (lambda f: sweep.items_from_file(f, f / "latin1.csv"), "The prompts file 'latin1.csv' is not UTF-8 text"),
    (lambda f: sweep.plan(["iwp", "nope"], BUDGETS, SEEDS), "Unknown method 'nope'"),
    (lambda f: sweep.plan(["iwp", "iwp"], BUDGETS, SEEDS), "names iwp more than once"),
    (lambda f: sweep.plan([], BUDGETS, SEEDS), "at least one of its methods"),
    (lambda f: sweep.plan(METHODS, "25%, 2.5", SEEDS), "Budget '2.5'"),
    (lambda f: sweep.plan(METHODS, " , ", SEEDS), "at least one of its budgets"),
    (lambda f: sweep.plan(METHODS, BUDGETS, "0, -1"), "random's seed (seed of the random draw) must be a whole number"),
    (lambda f: sweep.plan(METHODS, BUDGETS, "1, 1"), "names 1 more than once"),
    (lambda f: sweep.plan(METHODS, BUDGETS, "1, 01"), "The seeds list names 1 more than once"),
    (lambda f: sweep.plan(METHODS, BUDGETS, SEEDS, {"random": {"seed": 3}}), "sets the seed itself"),
    (lambda f: sweep.plan(METHODS, BUDGETS, SEEDS, {"iwp": {"lam": 500}}), "iwp's lam"),
    (lambda f: sweep.plan(METHODS, BUDGETS, SEEDS, {"mmr": {"trade": 0.1}}), "which the sweep does not run"),
    (lambda f: sweep.shared_params(METHODS, [("trade", "0.1")]), "No swept method has a parameter 'trade'"),
    (lambda f: sweep.shared_params(METHODS, [("seed", "1")]), "give the seeds with --seeds"),
    (lambda f: sweep.check_work(3, 700), "3 items × 700 runs = 2100 pruned answers, more than the limit of 2000"),
])
def test_bad_input_gives_one_sentence(folder, call, message):
    (folder / "empty").mkdir(exist_ok=True)
    (folder / "other.csv").write_text("image,prompt\na.png,what?\nzz.png,what?\n")
    (folder / "escape.csv").write_text("image,prompt\n../a.png,what?\n")
    (folder / "header.csv").write_text("file,question\na.png,what?\n")
    (folder / "blank.csv").write_text("image,prompt\na.png,\n")
    (folder / "none.csv").write_text("image,prompt,expected\n")
    (folder / "bad.json").write_text("[{")
    (folder / "dict.json").write_text('{"image": "a.png"}')
    (folder / "latin1.csv").write_bytes("image,prompt\na.png,où est la lettre?\n".encode("latin-1"))
    with pytest.raises(DualviewError) as error:
        call(folder)
    text = str(error.value)
    assert message in text and "\n" not in text and text.endswith((".", "...")), text


def test_run_time_errors_name_the_item_and_come_before_any_answer(session, folder, monkeypatch):
    (folder / "broken.png").write_bytes(b"not a png")
    runs, _ = sweep.plan(["iwp"], ["3"], [0])
    answered = []
    monkeypatch.setattr(session, "answer", lambda *a, **k: answered.append(1))
    good = sweep.Item("a.png", str(folder / "a.png"), "what?")
    cases = [([good, sweep.Item("broken.png", str(folder / "broken.png"), "what?")], runs,
              "Item 'broken.png': 'broken.png' is not a readable image"),
             ([good, sweep.Item("b", str(folder / "b.png"), "  ")], runs, "Item 'b': The prompt is empty"),
             ([good], sweep.plan(["iwp"], ["100000"], [0])[0], "Item 'a.png': Budget 100000 is more than the"),
             ([], runs, "The sweep has no items"),
             ([good] * 3, runs * 100, "more than the limit of 200"),
             ([good], runs, "pruning layer must be a whole number from 0 to 1")]
    for number, (items, chosen, message) in enumerate(cases):
        with pytest.raises(DualviewError, match=message.replace("(", r"\(")):
            sweep.run_sweep(session, items, chosen, limit=200, layer=7 if number == 5 else None)
    assert answered == []
