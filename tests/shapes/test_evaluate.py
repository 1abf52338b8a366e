"""The evaluation's measurements (issue 19): evidence tokens, top-k share, keep-evidence-only
accuracy through the engine, held-out drawing styles."""

import json

import numpy as np
import pytest
import torch

from dualview.shapes import evaluate as E
from dualview.shapes import world


def _grid_boxes(side=224, patch=16):
    g = side // patch
    return [[c * patch, r * patch, (c + 1) * patch, (r + 1) * patch] for r in range(g) for c in range(g)]


def test_evidence_tokens_are_the_patches_a_box_touches():
    """Reference: rasterise each integer box and list the patches holding one of its pixels."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = (int(v) for v in rng.integers(0, 200, 2))
            boxes.append([x0, y0, x0 + int(rng.integers(1, 40)), y0 + int(rng.integers(1, 40))])
        pixels = np.zeros((224, 224), bool)
        for x0, y0, x1, y1 in boxes:
            pixels[y0:y1, x0:x1] = True
        want = np.nonzero(pixels.reshape(14, 16, 14, 16).any(axis=(1, 3)).reshape(-1))[0].tolist()
        assert E.evidence_tokens(_grid_boxes(), boxes) == want
    assert E.evidence_tokens(_grid_boxes(), []) == []


def test_top_k_share():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2])
    assert E.top_k_share(scores, [1, 3]) == 1.0
    assert E.top_k_share(scores, [1, 0]) == 0.5
    assert E.top_k_share(scores, [4, 0, 2]) == 1 / 3
    assert E.top_k_share(np.ones(4), [0, 1]) == 1.0  # ties: lower index first


def test_style_names():
    assert E.style_list("all") == list(world.HELDOUT_STYLES)
    assert E.style_list("plain, jpeg-12") == ["plain", "jpeg-12"]
    with pytest.raises(Exception, match="the held-out styles are plain"):
        E.style_list("watercolour")


@pytest.fixture(scope="module")
def session():
    import dualview

    torch.set_num_threads(1)
    return dualview.load("builtin", device="cpu")


def test_keep_evidence_eval_answers_through_the_engine(session):
    """The measurement's numbers equal an independent pass: the engine's answer with all tokens and
    with the rasterised evidence patches kept from layer 4, and torch.topk of the magnitude."""
    from dualview.shapes.model import normalize_answer

    samples = world.heldout_set(7, 31)
    got = E.keep_evidence_eval(session, samples, 4)
    full, kept, share = {}, {}, {}
    for s in samples:
        p = session.prepare(s.image, s.question)
        pixels = np.zeros((224, 224), bool)
        for x0, y0, x1, y1 in s.evidence:
            pixels[y0:y1, x0:x1] = True
        ev = np.nonzero(pixels.reshape(14, 16, 14, 16).any(axis=(1, 3)).reshape(-1))[0].tolist()
        full.setdefault(s.qtype, []).append(normalize_answer(session.answer(p, max_new_tokens=4).text) == s.answer)
        kept.setdefault(s.qtype, []).append(
            normalize_answer(session.answer(p, keep=ev, layer=4, max_new_tokens=4).text) == s.answer)
        if ev:
            top = torch.topk(session.analyze(p, 4).magnitude, len(ev)).indices.tolist()
            share.setdefault(s.qtype, []).append(len(set(top) & set(ev)) / len(ev))
    for name, ref in (("all", full), ("evidence_only", kept), ("evidence_share", share)):
        assert set(got[name]) == set(ref) | {"overall"}
        for t, v in ref.items():
            assert got[name][t] == pytest.approx(float(np.mean(v)))
        assert got[name]["overall"] == pytest.approx(float(np.mean(sum(ref.values(), []))))
    assert got["counts"] == {t: len(v) for t, v in full.items()}
    for t in [*full, "overall"]:
        before = sum(full.values(), []) if t == "overall" else full[t]
        after = sum(kept.values(), []) if t == "overall" else kept[t]
        assert got["change"][t] == pytest.approx(got["evidence_only"][t] - got["all"][t])
        assert got["change_se"][t] == pytest.approx(E.paired_change(before, after)[1])


def test_paired_change_is_the_mean_difference_and_its_standard_error():
    before = [1, 1, 1, 0, 1, 1, 0, 1]
    after = [1, 0, 1, 1, 0, 1, 0, 1]
    d = [a - b for a, b in zip(after, before)]  # 0 -1 0 1 -1 0 0 0: mean -1/8
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    assert E.paired_change(before, after) == pytest.approx((mean, (var / len(d)) ** 0.5))
    assert E.paired_change([1, 0, 1], [1, 0, 1]) == (0.0, 0.0)  # no question changed: no uncertainty
    assert E.paired_change([1], [0]) == (-1.0, 0.0)
    for bad in (([1, 0], [1]), ([], [])):
        with pytest.raises(ValueError, match="need the same questions"):
            E.paired_change(*bad)


def test_where_by_margin_bins_the_where_questions_by_distance_to_the_grid_lines():
    samples = world.heldout_set(200, 3)
    rng = np.random.default_rng(1)
    correct = list(rng.random(len(samples)) < 0.7)
    got = E.where_by_margin(samples, correct)
    assert list(got) == ["[0, 4) px", "[4, 8) px", "[8, 16) px", "[16, inf) px"]
    where = [(s, ok) for s, ok in zip(samples, correct) if s.qtype == "where"]
    assert sum(v["n"] for v in got.values()) == len(where) > 0
    # an independent binning: each question's margin from its answer's grid lines, by brute force
    for key, (lo, hi) in zip(got, [(0, 4), (4, 8), (8, 16), (16, 1e9)]):
        hits = []
        for s, ok in where:
            (x0, y0, x1, y1), size = s.evidence[0], s.scene.size
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            margin = min(abs(cx - size / 3), abs(cx - 2 * size / 3), abs(cy - size / 3), abs(cy - 2 * size / 3))
            if lo <= margin < hi:
                hits.append(ok)
        assert got[key]["n"] == len(hits)
        assert got[key]["accuracy"] == (pytest.approx(np.mean(hits)) if hits else None)
    assert all(v["accuracy"] is None for v in E.where_by_margin(samples[:0], []).values())


def test_cli_writes_every_measurement(tmp_path):
    out = tmp_path / "r.json"
    E.main(["--n", "3", "--seed", "5", "--threads", "1", "--evidence", "4", "--styles", "plain,jpeg-12",
            "--json", str(out)])
    res = json.loads(out.read_text())
    assert res["evidence"]["layer"] == 4 and set(res["styles"]) == {"plain", "jpeg-12"}
    # the engine's all-token answers are the public path's (run_eval), question for question
    assert res["evidence"]["all"] == pytest.approx(res["accuracy"])
    assert sum(v["n"] for v in res["where_by_margin"].values()) == res["counts"].get("where", 0)
    E.main(["--n", "3", "--seed", "5", "--threads", "1", "--plain", "4", "--json", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text())["accuracy"] == res["styles"]["plain"]["accuracy"]


def test_training_question_words_are_the_engines_text_positions(session):
    """The share loss of training (train.magnitude_evidence_loss) takes q_T over a packed segment's
    words before <sep>; the engine, whose magnitude the evidence share ranks, takes the prompt's
    text positions: for every question type they are the same tokens, right after the image."""
    from dualview.shapes import train as T

    samples = world.heldout_set(40, 5)
    assert {s.qtype for s in samples} == set(world.QUESTION_TYPES)
    for s in samples:
        p = session.prepare(s.image, s.question)
        seg, lab = np.zeros(T.SEG_LEN, np.int64), np.zeros(T.SEG_LEN, np.int64)
        T.write_segment(seg, lab, s.question, s.answer)
        words = seg[: int(np.nonzero(seg == T.VOCAB[T.SEP])[0][0])]
        end = int(p.visual_positions.max()) + 1
        assert p.text_positions.tolist() == list(range(end, end + len(words)))
        assert p.input_ids[p.text_positions].tolist() == words.tolist()
