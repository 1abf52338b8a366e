"""Evaluate a shapes-world VLM on a held-out set with greedy decoding, per question type.

    python -m dualview.shapes.evaluate --n 2000 --seed 12345 [--model assets/shapes-vlm]
    python -m dualview.shapes.evaluate --n 300 --plain 4    # the same scenes drawn plainly at 4x size
    python -m dualview.shapes.evaluate --n 2000 --evidence 4 --styles all --json out.json

Each question goes through the public path: processor (image + ``format_prompt(question)``) then
``model.generate`` (greedy), exactly as the app asks it. The held-out set is
``world.heldout_set(n, seed)``, a stream the training never draws from. Optional measurements
(issue 19), each per question type:

- ``--evidence LAYER``, through the engine (``dualview.load``, ``session.prepare``,
  ``session.analyze``, ``session.answer``): the accuracy with all visual tokens next to the
  accuracy when only the evidence tokens (the visual tokens whose box overlaps one of the
  question's evidence boxes, the app's rule, :func:`evidence_tokens`) are kept from decoder layer
  ``LAYER`` on (:func:`keep_evidence_eval`), and the change between the two with its paired
  standard error (:func:`paired_change`: at 124 questions of a type, one question is 0.8 points);
  and the share of evidence tokens among the top-k of
  the information magnitude at that layer, k = the number of evidence tokens
  (``analysis.magnitude``: the mean of the question words' queries, method.md §2;
  :func:`evidence_share`). Questions without evidence (a "no") keep no visual token and have no
  share.
- ``--styles NAME,...`` (or ``all``): the accuracy on the same scenes redrawn in drawing styles
  training never sampled (``world.HELDOUT_STYLES``; ``plain`` is ``--plain 4``), uploaded at their
  own size (the processor resamples them).
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import time

import numpy as np

from . import world
from .model import BUILTIN_DIR


def _per_type(values: dict) -> dict:
    """``{qtype: [float]}`` -> means in :data:`world.QUESTION_TYPES` order plus ``overall`` (all items)."""
    out = {t: float(np.mean(values[t])) for t in world.QUESTION_TYPES if values.get(t)}
    every = [v for vs in values.values() for v in vs]
    out["overall"] = float(np.mean(every)) if every else float("nan")
    return out


def run_eval(model, processor, samples, progress: bool = False) -> dict:
    """Accuracy per question type and overall, mean latency (s) per question, and the ``where``
    accuracy by the object centre's distance to the grid lines (:func:`where_by_margin`)."""
    from tqdm import tqdm

    from .model import answer, normalize_answer

    hits: dict = {}
    correct = []
    t0 = time.perf_counter()
    for s in tqdm(samples, disable=not progress, desc="eval"):
        correct.append(normalize_answer(answer(model, processor, s.image, s.question)) == s.answer)
        hits.setdefault(s.qtype, []).append(correct[-1])
    dt = (time.perf_counter() - t0) / max(1, len(samples))
    acc = {t: sum(v) / len(v) for t, v in sorted(hits.items(), key=lambda kv: world.QUESTION_TYPES.index(kv[0]))}
    counts = {t: len(v) for t, v in hits.items()}
    acc["overall"] = sum(sum(v) for v in hits.values()) / max(1, len(samples))
    return {"accuracy": acc, "counts": counts, "seconds_per_question": dt,
            "where_by_margin": where_by_margin(samples, correct)}


MARGIN_EDGES = (0.0, 4.0, 8.0, 16.0)  # px of the scene's canvas: the bins of where_by_margin


def paired_change(before: list, after: list) -> tuple[float, float]:
    """Mean change ``after - before`` of paired 0/1 outcomes (the same questions answered two
    ways) and its standard error, ``std(after_i - before_i, ddof=1) / sqrt(n)`` (0 for n < 2):
    only the questions whose outcome differs move it, so it is tighter than two independent
    accuracies' errors. Fractions, not points. ValueError if the lists differ in length or are empty."""
    if len(before) != len(after) or not before:
        raise ValueError(f"paired outcomes: {len(before)} and {len(after)}; need the same questions, at least one")
    d = np.asarray(after, float) - np.asarray(before, float)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()), se


def where_by_margin(samples, correct) -> dict:
    """Accuracy of the ``where`` questions among ``samples`` (``correct``: one bool per sample, same
    order) by how far the looked-up object's box centre lies from the nearest line of the 3 x 3
    grid (``world.cell_margin``, px of the scene's canvas), in the bins of :data:`MARGIN_EDGES`:
    ``{"[0, 4) px": {"n": int, "accuracy": float}, ..., "[16, inf) px": ...}`` (accuracy None in an
    empty bin). Near a line the answer hangs on sub-patch precision."""
    edges = MARGIN_EDGES + (float("inf"),)
    bins = [[] for _ in MARGIN_EDGES]
    for s, ok in zip(samples, correct):
        if s.qtype == "where":
            x0, y0, x1, y1 = s.evidence[0]
            margin = world.cell_margin((x0 + x1) / 2, (y0 + y1) / 2, s.scene.size)
            bins[bisect.bisect_right(MARGIN_EDGES, margin) - 1].append(ok)
    return {f"[{lo:g}, {hi:g}) px": {"n": len(v), "accuracy": float(np.mean(v)) if v else None}
            for lo, hi, v in zip(edges, edges[1:], bins)}


def evidence_tokens(token_boxes, evidence_boxes) -> list:
    """Indices of the visual tokens whose box (``token_boxes`` [Nv, 4], x0 y0 x1 y1 in the image's
    pixels, e.g. ``prepared.geometry.boxes``) overlaps one of ``evidence_boxes`` (same pixels) with
    a positive area: the rule of the app's examples (``dualview.app.state.evidence_tokens``)."""
    boxes = np.asarray(token_boxes, dtype=float).reshape(-1, 4)
    hits = np.zeros(len(boxes), dtype=bool)
    for x0, y0, x1, y1 in evidence_boxes:
        hits |= (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
    return np.nonzero(hits)[0].tolist()


def top_k_share(scores, chosen: list) -> float:
    """Share of ``chosen`` (k indices) among the k highest ``scores`` [N] (ties: lower index first)."""
    k = len(chosen)
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=float)))
    return len(set(order[:k].tolist()) & set(chosen)) / k


def _scaled(boxes, sample) -> list:
    """Evidence boxes (the scene's pixels) in the pixels of ``sample.image``."""
    f = sample.image.size[0] / sample.scene.size
    return [[v * f for v in b] for b in boxes]


def keep_evidence_eval(session, samples, layer: int, progress: bool = False) -> dict:
    """Per question type: the accuracy with all visual tokens (``all``), with only the evidence
    tokens kept from decoder ``layer`` on (``evidence_only``), and the mean share of evidence
    tokens among the top-k of ``analysis.magnitude`` at ``layer`` (``evidence_share``, over the
    questions that have evidence; ``share_counts`` of them), with ``counts`` of questions and
    ``mean_evidence_tokens``; ``change`` and ``change_se``: evidence only minus all tokens on the
    same questions and its standard error (:func:`paired_change`; fractions), per type and
    ``overall``. Greedy answers of at most 4 tokens through ``session``."""
    from tqdm import tqdm

    from .model import normalize_answer

    full, kept, share, sizes = {}, {}, {}, {}
    for s in tqdm(samples, disable=not progress, desc="evidence"):
        prepared = session.prepare(s.image, s.question)
        ev = evidence_tokens(prepared.geometry.boxes, _scaled(s.evidence, s))
        sizes.setdefault(s.qtype, []).append(len(ev))
        full.setdefault(s.qtype, []).append(
            normalize_answer(session.answer(prepared, max_new_tokens=4).text) == s.answer)
        kept.setdefault(s.qtype, []).append(
            normalize_answer(session.answer(prepared, keep=ev, layer=layer, max_new_tokens=4).text) == s.answer)
        if ev:
            share.setdefault(s.qtype, []).append(top_k_share(session.analyze(prepared, layer).magnitude.numpy(), ev))
    change = {t: paired_change(full[t], kept[t]) for t in full}
    change["overall"] = paired_change(sum(full.values(), []), sum(kept.values(), []))
    order = [t for t in (*world.QUESTION_TYPES, "overall") if t in change]
    return {"layer": layer, "all": _per_type(full), "evidence_only": _per_type(kept),
            "change": {t: change[t][0] for t in order}, "change_se": {t: change[t][1] for t in order},
            "evidence_share": _per_type(share), "counts": {t: len(v) for t, v in full.items()},
            "share_counts": {t: len(v) for t, v in share.items()},
            "mean_evidence_tokens": {t: float(np.mean(v)) for t, v in sizes.items()}}


def restyled(samples, style: world.Style, seed: int) -> list:
    """``samples`` with each scene redrawn in ``style`` (pixel noise from ``default_rng([seed, i])``)."""
    return [dataclasses.replace(s, image=world.render(s.scene, np.random.default_rng([seed, i]), style=style))
            for i, s in enumerate(samples)]


def style_list(text: str) -> list:
    """``--styles`` value: ``all`` or comma-separated names of ``world.HELDOUT_STYLES``."""
    names = list(world.HELDOUT_STYLES) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in world.HELDOUT_STYLES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: the held-out styles are {', '.join(world.HELDOUT_STYLES)} "
                                         "(or all)")
    return names


def _print_table(title: str, acc: dict, counts: dict) -> None:
    print(title)
    for t, a in acc.items():
        print(f"  {t:16s} {100 * a:6.2f} %  (n={counts.get(t, sum(counts.values()))})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(BUILTIN_DIR))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=12345, help="held-out seed (training never uses this stream)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--plain", type=int, default=None, metavar="SCALE",
                    help="redraw every scene with world.render_plain at SCALE x the size (a stand-in for "
                         "scenes drawn by hand) and ask about that image instead")
    ap.add_argument("--evidence", type=int, default=None, metavar="LAYER",
                    help="also measure, through the engine, keep-evidence-only accuracy from decoder layer LAYER "
                         "and the evidence share of the top-k magnitude at that layer (see the module docstring)")
    ap.add_argument("--styles", type=style_list, default=None, metavar="NAMES",
                    help="also measure accuracy on the scenes redrawn in these held-out drawing styles "
                         f"({', '.join(world.HELDOUT_STYLES)}; or all)")
    ap.add_argument("--json", default=None, help="also write the result to this file")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n {args.n}: the number of held-out questions must be at least 1")
    if args.plain is not None and args.plain < 1:
        ap.error(f"--plain {args.plain}: the scale must be a whole number of at least 1")

    import torch

    from .model import load_builtin

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, processor = load_builtin(args.model, dtype=getattr(torch, args.dtype))
    load_s = time.perf_counter() - t0
    samples = world.heldout_set(args.n, args.seed)
    asked = samples
    if args.plain:
        asked = [dataclasses.replace(s, image=world.render_plain(s.scene, args.plain)) for s in samples]
    res = run_eval(model, processor, asked, progress=True)
    res.update({"model": args.model, "n": args.n, "seed": args.seed, "dtype": args.dtype, "load_seconds": load_s,
                "plain_scale": args.plain})
    drawn = f", drawn plainly at {args.plain}x" if args.plain else ""
    _print_table(f"held-out seed {args.seed}, {args.n} questions{drawn}, greedy, {args.dtype}",
                 res["accuracy"], res["counts"])
    print(f"load {load_s:.2f} s, {1000 * res['seconds_per_question']:.0f} ms per question (image -> answer)")
    if res["counts"].get("where"):
        print("where, by the object centre's distance to the nearest grid line: " + ", ".join(
            f"{k} {100 * v['accuracy']:.1f} % (n={v['n']})" for k, v in res["where_by_margin"].items() if v["n"]))
    if args.evidence is not None:
        import dualview

        session = dualview.load(args.model, device="cpu", dtype=getattr(torch, args.dtype))
        ev = keep_evidence_eval(session, samples, session.check_layer(args.evidence), progress=True)
        res["evidence"] = ev
        print(f"layer {args.evidence}: all tokens / evidence tokens only / change, points ± standard error "
              "(paired) / evidence share of the magnitude's top-k")
        for t in ev["all"]:
            print(f"  {t:16s} {100 * ev['all'][t]:6.2f} %  {100 * ev['evidence_only'][t]:6.2f} %  "
                  f"{100 * ev['change'][t]:+5.1f} ± {100 * ev['change_se'][t]:.1f}  "
                  f"{ev['evidence_share'].get(t, float('nan')):.3f}")
    if args.styles:
        res["styles"] = {}
        for name in args.styles:
            got = run_eval(model, processor, restyled(samples, world.HELDOUT_STYLES[name], args.seed), progress=True)
            res["styles"][name] = got
            _print_table(f"held-out style {name}", got["accuracy"], got["counts"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
