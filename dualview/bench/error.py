"""Approximation error of the implicit weight per method and budget, and whether it predicts answer flips.

``python -m dualview.bench error [--model builtin] [--n N] [--seed 12345] [--quick] [--oracle]``

For every held-out question: one analysis at the default pruning layer l; for every method and
budget its kept set S, and at layer l (method.md §6) the relative weight error
``‖W − W_S‖_F / ‖W‖_F``, the effective and stable rank of ``W_S`` (mean over KV heads), and the
attention-output error of the text queries, and for the same text queries (method.md §8.2–8.3,
ours) the kept attention mass m, the share ``1 − m`` that was dropped, and the two exact parts of
the attention-output change: the dropped updates ``‖η φ(q)(W − W_S)‖/‖A‖`` and the normaliser
``‖(1 − m) A_S‖/‖A‖`` (means over query heads); then the answer with that kept set. All errors are
measured on layer l's full-sequence keys and values, also for methods that prune earlier
(divprune and cdpruner before the language model, fastv at layer 2): they say which rank-1
updates of the full model's W a kept set retains.

A flip is a pruned answer that differs from the full-token answer. For each error measure the
suite reports the point-biserial correlation with flips (Pearson r between the measure and the
0/1 flip) and the AUC (probability that a flipped case has the larger error; 0.5 = no signal),
within each budget over all methods (the budget itself drives both error and flips, so pooling
budgets would mostly measure the budget), and pooled.
"""

from __future__ import annotations

import time

import numpy as np

from dualview.bench import common

MEASURES = ("weight_error", "effective_rank", "stable_rank", "visual_weight_error", "visual_effective_rank",
            "attention_error", "dropped_mass", "dropped_part", "normaliser_part")
"""Every measure whose mean is reported and whose association with flips is computed; ``dropped_mass``
is ``1 − kept_mass`` (larger means more dropped, like the errors)."""


def split_measures(analysis, kept) -> dict:
    """Kept mass, dropped mass and the two parts of the output change for the text queries
    (:meth:`Analysis.debug_measures`, method.md §8.2–8.3): floats, means over query heads."""
    split = analysis.debug_measures(kept, "text")
    return {"kept_mass": split["kept_mass"], "dropped_mass": 1.0 - split["kept_mass"],
            "dropped_part": split["dropped_part"], "normaliser_part": split["normaliser_part"]}


def measure(session, sample, methods, budgets) -> list[dict]:
    """One record per (method, budget) for one question: errors, answer, flip."""
    from dualview.methods import get_method

    answer = common.Answers(session, sample)
    analysis = session.analyze(answer.prepared)
    full = answer()
    records = []
    for method in methods:
        for budget in budgets:
            chosen = get_method(method)
            kept = chosen.select(analysis, budget).kept
            prediction = answer(kept, chosen.prune_layer(analysis))
            records.append({"question": sample.question, "qtype": sample.qtype, "method": method, "budget": budget,
                            "kept_tokens": int(kept.numel()), **analysis.measures(kept),
                            **split_measures(analysis, kept), "answer": prediction, "full": full,
                            "correct": prediction == sample.answer, "full_correct": full == sample.answer,
                            "flip": prediction != full})
    return records


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks


def flip_association(values, flips) -> dict:
    """Point-biserial r and AUC of ``values`` for the 0/1 ``flips`` (None where undefined)."""
    x = np.asarray(values, dtype=float)
    y = np.asarray(flips, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0 or np.ptp(x) == 0:
        return {"point_biserial": None, "auc": None, "flips": positives, "cases": len(y)}
    r = float(np.corrcoef(x, y.astype(float))[0, 1])
    auc = (average_ranks(x)[y].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    return {"point_biserial": r, "auc": float(auc), "flips": positives, "cases": len(y)}


def summarise(records: list[dict], methods, budgets) -> tuple[list[dict], list[dict]]:
    """(rows per method and budget, rows of flip associations per budget and pooled)."""
    rows = []
    for method in methods:
        for budget in budgets:
            mine = [r for r in records if r["method"] == method and r["budget"] == budget]
            full_accuracy = np.mean([r["full_correct"] for r in mine])
            accuracy = float(np.mean([r["correct"] for r in mine]))
            row = {"method": method, "budget": budget, "kept_tokens": mine[0]["kept_tokens"], "n": len(mine)}
            row.update({f"mean_{m}": float(np.mean([r[m] for r in mine])) for m in MEASURES + ("kept_mass",)})
            row.update({"flip_rate": float(np.mean([r["flip"] for r in mine])), "accuracy": accuracy,
                        "relative": 100 * accuracy / full_accuracy if full_accuracy else None})
            rows.append(row)
    associations = []
    for budget in tuple(budgets) + ("all",):
        mine = [r for r in records if budget == "all" or r["budget"] == budget]
        for m in MEASURES:
            associations.append({"budget": budget, "measure": m, **flip_association([r[m] for r in mine],
                                                                                       [r["flip"] for r in mine])})
    return rows, associations


def print_tables(rows, associations, budgets, methods) -> None:
    table = {(r["method"], r["budget"]): r for r in rows}
    for title, key, fmt in (("relative weight error ‖W − W_S‖/‖W‖", "mean_weight_error", "{:>10.3g}"),
                            ("effective rank of W_S", "mean_effective_rank", "{:>10.2f}"),
                            ("visual tokens only: ‖W_V − W_S∩V‖/‖W_V‖", "mean_visual_weight_error", "{:>10.3g}"),
                            ("visual tokens only: effective rank", "mean_visual_effective_rank", "{:>10.2f}"),
                            ("attention-output error (text queries)", "mean_attention_error", "{:>10.3f}"),
                            ("dropped attention mass 1 − m (text queries)", "mean_dropped_mass", "{:>10.3f}"),
                            ("output change from the dropped updates ‖η φ(q)(W − W_S)‖/‖A‖", "mean_dropped_part",
                             "{:>10.3f}"),
                            ("output change from the normaliser ‖(1 − m) A_S‖/‖A‖", "mean_normaliser_part", "{:>10.3f}"),
                            ("answer flips vs. all tokens (%)", "flip_rate", "{:>10.1%}")):
        print(f"\n{title}, mean over questions, by visual tokens kept")
        print(f"{'method':<15}" + "".join(f"{100 * b:>9.1f}%" for b in budgets))
        for method in methods:
            print(f"{method:<15}" + "".join(fmt.format(table[method, b][key]) for b in budgets))
    print("\ndoes the error predict a flip? point-biserial r / AUC = P(a flipped case has the larger value) "
          "(flips / cases)\n  errors: AUC > 0.5 means a larger error goes with flips; "
          "ranks: AUC < 0.5 means a higher rank goes with kept answers")
    for a in associations:
        budget = a["budget"] if a["budget"] == "all" else f"{100 * a['budget']:.1f}%"
        r = "-" if a["point_biserial"] is None else f"{a['point_biserial']:+.3f}"
        auc = "-" if a["auc"] is None else f"{a['auc']:.3f}"
        print(f"  {budget:>6} {a['measure']:<16} r {r:>7}  AUC {auc:>6}  ({a['flips']}/{a['cases']})")


def markdown(rows, associations, budgets, methods) -> str:
    """README tables: mean errors and flip rate per method and budget; flip associations."""
    table = {(r["method"], r["budget"]): r for r in rows}
    heads = " | ".join(f"{100 * b:.1f} %" for b in budgets)
    lines = ["Mean over questions at each budget: relative weight error ‖W − W_S‖/‖W‖ / effective rank of W_S / "
             "the same two over the visual tokens' updates only / attention-output error / answers changed vs. "
             "all tokens (%).", "",
             f"| method | {heads} |", "|---|" + "---|" * len(budgets)]
    for method in methods:
        cells = [f"{r['mean_weight_error']:.3g} / {r['mean_effective_rank']:.2f} / {r['mean_visual_weight_error']:.3g} / "
                 f"{r['mean_visual_effective_rank']:.2f} / {r['mean_attention_error']:.3f} / "
                 f"{100 * r['flip_rate']:.1f}" for r in (table[method, b] for b in budgets)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "The attention-output change of the text queries at the pruning layer, split exactly "
              "(method.md §8.3, ours): kept attention mass m / dropped-updates part ‖η φ(q)(W − W_S)‖/‖A‖ / "
              "normaliser part ‖(1 − m) A_S‖/‖A‖ (means over heads and questions).", "",
              f"| method | {heads} |", "|---|" + "---|" * len(budgets)]
    for method in methods:
        cells = [f"{r['mean_kept_mass']:.3f} / {r['mean_dropped_part']:.3f} / {r['mean_normaliser_part']:.3f}"
                 for r in (table[method, b] for b in budgets)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Does the measure predict a changed answer? Point-biserial r / AUC (AUC = probability that a "
              "changed answer has the larger value; below 0.5 the measure points the other way, reported as it "
              "came out; dropped mass is 1 − m), over all methods at each budget:", "",
              f"| measure | {heads} | all budgets |", "|---|" + "---|" * (len(budgets) + 1)]
    for measure_name in MEASURES:
        cells = []
        for budget in tuple(budgets) + ("all",):
            a = next(x for x in associations if x["budget"] == budget and x["measure"] == measure_name)
            cells.append("-" if a["auc"] is None else f"{a['point_biserial']:+.2f} / {a['auc']:.2f} ({a['flips']}/{a['cases']})")
        lines.append(f"| {measure_name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def error_figure(rows, methods, budgets, num_visual: int):
    from dualview.figures.curves import METRICS, error_curves

    ordered = sorted(budgets)
    counts = [next(r["kept_tokens"] for r in rows if r["budget"] == b) for b in ordered]
    curves = {m: {measure: [next(r[f"mean_{measure}"] for r in rows if r["method"] == m and r["budget"] == b)
                            for b in ordered] for measure in METRICS}
              for m in methods}
    return error_curves(counts, curves, num_visual=num_visual, highlight="iwp")


def main(argv=None) -> None:
    p = common.parser("error", __doc__.split("\n")[0], n=300, quick_n=3)
    p.add_argument("--methods", default=",".join(common.MAIN_METHODS), help="comma-separated registry names")
    p.add_argument("--oracle", action="store_true", help="also the greedy weight-error oracle (slow)")
    args = p.parse_args(argv)
    n = common.question_count(args)
    methods = common.method_names(args.methods, ("oracle",) if args.oracle else ())
    session, model = common.load(args)
    budgets = common.PAPER_BUDGETS
    samples = common.questions(session, n, args.seed)
    start = time.perf_counter()
    records = [r for s in common.progress(samples, "error") for r in measure(session, s, methods, budgets)]
    seconds = time.perf_counter() - start
    rows, associations = summarise(records, methods, budgets)
    print_tables(rows, associations, budgets, methods)
    num_visual = int(session.model.config.image_seq_length)
    record = common.header("error", args, model, n)
    record.update(seconds=seconds, seconds_per_question=seconds / n, num_visual=num_visual,
                  layer=session.default_layer, associations=associations, records=records)
    stem = "error" + common.suffix(args)
    written = common.write(args.out, stem, record, rows)
    written.append(common.write_markdown(args.out, stem, record, markdown(rows, associations, budgets, methods)))
    written += common.save_figure(error_figure(rows, methods, budgets, num_visual), args.out, stem + "-curves")
    print(f"\n{n} questions in {seconds:.0f} s ({seconds / n:.2f} s per question); wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
