"""Accuracy kept per method and budget on held-out shapes-world questions, with the paper's ablations.

``python -m dualview.bench accuracy [--model builtin] [--n N] [--seed 12345] [--quick]``

For every question: ONE analysis at the default pruning layer serves every method, budget and
hyper-parameter setting; the full-token answer is computed once; each kept set is answered
with the engine (``session.answer``, greedy, pruning from the method's own layer). Reported:
accuracy per question type and overall, the relative score (pruned accuracy / full-token
accuracy × 100, as the paper reports it) and the agreement with the full-token answer.

- main table: methods × the paper's budgets (35.3 / 22.2 / 11.1 % of the visual tokens);
- curve: accuracy versus budget (5 % to 100 %; at 100 % every token is kept, which is the
  full-token run by definition, so it is not re-run);
- ablations of ``iwp`` at the ablation budgets: pruning layer (0 … L−1, one analysis per layer),
  λ (1, 5, 10), g (1, 2, 4, 8), b₀ (1, 2, 8, 64), and RoPE in the magnitude (q, k after RoPE
  instead of before) or not in the duplication (keys before RoPE instead of after). The engine has
  no RoPE switch; these two variants are built here from the analysis's own pre/post-RoPE
  projections with ``dual_form.magnitude`` / ``dual_form.DuplicationBlocks`` and
  ``selection.pc_mmr`` (defaults b₀ 2, g 2, λ 5), everything else unchanged;
- the query rows of iwp's magnitude (method.md §8.1, ours): text / last / all, at the paper's budgets;
- evidence recall (method.md §8.5) of every kept set: the share of the question's evidence tokens
  (visual tokens overlapping its ground-truth boxes, :func:`dualview.engine.attribution.evidence_tokens`)
  it holds, averaged over the questions that have evidence.

No hyper-parameter is tuned here: every method runs with its registry defaults (the paper's).
"""

from __future__ import annotations

import time

from dualview.bench import common
from dualview.queries import DEFAULT_QUERY

CURVE_BUDGETS = (0.05, 0.111, 0.222, 0.353, 0.5, 0.75, 1.0)
ABLATION_BUDGETS = (0.353, 0.111)
LAMBDAS = (1.0, 5.0, 10.0)
GROWTHS = (1, 2, 4, 8)
FIRST_CHUNKS = (1, 2, 8, 64)
ROPE = ("magnitude with RoPE", "duplication without RoPE")


def iwp_defaults() -> dict:
    """The registry's numeric iwp defaults (b0, growth, lam): the paper's."""
    from dualview.methods import get_method

    return get_method("iwp").numeric_defaults


def rope_variant(analysis, variant: str, budget: float):
    """Kept visual tokens of PC-MMR with RoPE toggled in one of its two scores (module docstring)."""
    from dualview import dual_form, selection

    p, visual, text = analysis.projections, analysis.prepared.visual_positions, analysis.prepared.text_positions
    magnitude, duplication = analysis.magnitude, analysis.duplication_blocks
    if variant == ROPE[0]:
        magnitude = dual_form.magnitude(p.q_post[:, text], p.k_post[:, visual], p.v[:, visual]).float()
    else:
        duplication = dual_form.DuplicationBlocks(p.k_pre[:, visual], p.v[:, visual])
    return selection.pc_mmr(magnitude, duplication, budget, **iwp_defaults()).kept


QUERIES = ("text", "last", "all")
"""The query-choice ablation of iwp (method.md §8.1): the paper's instruction rows, the last prompt
position, every non-image position."""


def ablation_settings(num_layers: int, default_layer: int):
    """(setting, value, is_default) for every ablation point."""
    defaults = iwp_defaults()
    yield from (("layer", layer, layer == default_layer) for layer in range(num_layers))
    yield from (("lambda", lam, lam == defaults["lam"]) for lam in LAMBDAS)
    yield from (("g", growth, growth == defaults["growth"]) for growth in GROWTHS)
    yield from (("b0", b0, b0 == defaults["b0"]) for b0 in FIRST_CHUNKS)
    yield ("rope", "paper: magnitude without, duplication with", True)
    yield from (("rope", variant, False) for variant in ROPE)
    yield from (("query", query, query == DEFAULT_QUERY) for query in QUERIES)


def predict(session, sample, methods, curve_budgets, ablation_budgets, query_budgets=()) -> tuple[dict, dict]:
    """Every prediction for one question, and the evidence recall of every kept set.

    Returns ``(answers, recalls)``, both keyed by ``("full",)``, ``("main", method, budget)`` and
    ``("ablation", setting, value, budget)`` (ablations need ``iwp`` among ``methods``; the query
    ablation runs at ``query_budgets``, the others at ``ablation_budgets``): the normalised answer,
    and the share of the sample's evidence tokens the kept set holds (method.md §8.5; None when
    the sample has no evidence box).
    """
    from dualview.attribution import evidence_recall
    from dualview.engine.attribution import evidence_tokens
    from dualview.methods import get_method

    answer = common.Answers(session, sample)
    analysis = session.analyze(answer.prepared)
    evidence = evidence_tokens(analysis.geometry, sample.evidence)
    iwp = get_method("iwp")
    found = {("full",): answer()}
    recalls = {("full",): evidence_recall(range(analysis.num_visual), evidence)}

    def run(key, kept, layer):
        found[key] = answer(kept, layer)
        recalls[key] = evidence_recall(kept, evidence)

    for method in methods:
        for budget in curve_budgets:
            if budget == 1.0:
                found[("main", method, budget)], recalls[("main", method, budget)] = found[("full",)], recalls[("full",)]
                continue
            chosen = get_method(method)
            run(("main", method, budget), chosen.select(analysis, budget).kept, chosen.prune_layer(analysis))
    for setting, value, is_default in ablation_settings(session.num_layers, session.default_layer) if ablation_budgets else ():
        for budget in query_budgets if setting == "query" else ablation_budgets:
            key = ("ablation", setting, value, budget)
            if is_default:
                found[key], recalls[key] = found[("main", "iwp", budget)], recalls[("main", "iwp", budget)]
            elif setting == "layer":
                run(key, iwp.select(session.analyze(answer.prepared, layer=value), budget).kept, value)
            elif setting == "rope":
                run(key, rope_variant(analysis, value, budget), analysis.layer)
            else:
                param = {"lambda": "lam", "g": "growth", "b0": "b0", "query": "query"}[setting]
                run(key, iwp.select(analysis, budget, **{param: value}).kept, analysis.layer)
    return found, recalls


def summarise(samples, predictions: list[dict], recalls: list[dict], num_visual: int, layers: dict) -> list[dict]:
    """One row per key: accuracy per type and overall, relative score, agreement with full, and the
    mean evidence recall over the samples that have evidence (None when none has)."""
    from dualview.budget import resolve_budget

    full = [p[("full",)] for p in predictions]
    full_accuracy = common.accuracy_by_type(samples, full)
    rows = []
    for key in predictions[0]:
        answers = [p[key] for p in predictions]
        accuracy = common.accuracy_by_type(samples, answers)
        group = key[0]
        if group == "full":
            method, setting, value, budget, layer = "full", "", "", 1.0, ""
        elif group == "main":
            (_, method, budget), setting, value = key, "", ""
            layer = layers[method]
        else:
            (_, setting, value, budget), method = key, "iwp"
            layer = value if setting == "layer" else layers["iwp"]
        row = {"group": group, "method": method, "setting": setting, "value": value, "budget": budget,
               "kept_tokens": resolve_budget(budget, num_visual), "layer": layer,
               "n": len(samples), "accuracy": accuracy["overall"],
               "relative": 100 * accuracy["overall"] / full_accuracy["overall"] if full_accuracy["overall"] else None,
               "agreement": sum(a == f for a, f in zip(answers, full)) / len(samples),
               "evidence_recall": mean_recall([r[key] for r in recalls])}
        row.update({f"accuracy_{t}": a for t, a in accuracy.items() if t != "overall"})
        rows.append(row)
    return rows


def mean_recall(values) -> float | None:
    """Mean of the evidence recalls that are defined (samples with evidence), None when none is."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def accuracy_curve(rows: list[dict], full_accuracy: float):
    """Plotly figure: accuracy versus kept fraction, one line per method, full-token level dashed."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for method in dict.fromkeys(r["method"] for r in rows if r["group"] == "main"):
        points = sorted((r["budget"], r["accuracy"]) for r in rows if r["group"] == "main" and r["method"] == method)
        figure.add_trace(go.Scatter(x=[100 * b for b, _ in points], y=[100 * a for _, a in points],
                                    mode="lines+markers", name=method,
                                    line=dict(width=3 if method == "iwp" else 1.5)))
    figure.add_hline(y=100 * full_accuracy, line=dict(dash="dash", color="gray"), annotation_text="all tokens")
    figure.update_layout(title="Held-out accuracy versus visual tokens kept", xaxis_title="visual tokens kept (%)",
                         yaxis_title="accuracy (%)", plot_bgcolor="white", paper_bgcolor="white",
                         xaxis=dict(gridcolor="#eee"), yaxis=dict(gridcolor="#eee"))
    return figure


def recall_cell(row) -> str:
    """A row's mean evidence recall in percent, or '-' when no question had evidence."""
    return "-" if row["evidence_recall"] is None else f"{100 * row['evidence_recall']:.1f}"


def percent(value) -> str:
    """A relative score for a table: one decimal, or '-' when the full-token accuracy is 0."""
    return f"{'-':>5}" if value is None else f"{value:5.1f}"


def print_tables(rows: list[dict], budgets, methods) -> None:
    full = next(r for r in rows if r["group"] == "full")
    print(f"\nall tokens: accuracy {100 * full['accuracy']:.1f} % (n = {full['n']})")
    main = {(r["method"], r["budget"]): r for r in rows if r["group"] == "main"}
    print("\naccuracy % (relative score = pruned / full x 100) by visual tokens kept")
    print(f"{'method':<15}" + "".join(f"{100 * b:>18.1f}%" for b in budgets))
    for method in methods:
        print(f"{method:<15}" + "".join(f"{100 * main[method, b]['accuracy']:>10.1f} ({percent(main[method, b]['relative'])})"
                                          for b in budgets))
    print("\nevidence recall % (evidence patches kept) by visual tokens kept")
    for method in methods:
        print(f"{method:<15}" + "".join(f"{recall_cell(main[method, b]):>19}" for b in budgets))
    types = [k[len("accuracy_"):] for k in full if k.startswith("accuracy_")]
    for budget in budgets:
        print(f"\naccuracy % per question type at {100 * budget:.1f} % kept")
        print(f"{'method':<15}" + "".join(f"{t[:13]:>14}" for t in types))
        for method in ("full",) + tuple(methods):
            row = full if method == "full" else main[method, budget]
            print(f"{method:<15}" + "".join(f"{100 * row['accuracy_' + t]:>14.1f}" for t in types))
    ablations = [r for r in rows if r["group"] == "ablation"]
    for budget in dict.fromkeys(r["budget"] for r in ablations):
        print(f"\niwp ablations at {100 * budget:.1f} % kept: accuracy % (relative)")
        for r in (r for r in ablations if r["budget"] == budget):
            print(f"  {r['setting']:<7} {str(r['value']):<58} {100 * r['accuracy']:6.1f} ({percent(r['relative'])}), "
                  f"evidence recall {recall_cell(r)}")


PAPER_ABLATIONS = {  # method.md §4-§5: LLaVA-OneVision-7B, 35.3 % kept, mean relative score
    "layer": {0: 93.2, 2: 94.8, 4: 97.9, 6: 97.9, 8: 97.8, 10: 97.9},
    "lambda": {1.0: 97.8, 5.0: 97.9, 10.0: 97.4},
    "g": {1: 97.4, 2: 97.9, 4: 97.5, 8: 97.7},
    "b0": {1: 97.4, 2: 97.9, 8: 97.2, 64: 97.5},
    "rope": {"paper: magnitude without, duplication with": 97.9, ROPE[0]: 97.0, ROPE[1]: 94.6},
    "query": {},  # ours (method.md §8.1): the paper has no such ablation
}


def markdown(rows: list[dict], methods) -> str:
    """README tables: accuracy and relative score beside the paper's, per type, ablations."""
    def cell(row):
        return f"{100 * row['accuracy']:.1f} ({percent(row['relative']).strip()})"

    full = next(r for r in rows if r["group"] == "full")
    main = {(r["method"], r["budget"]): r for r in rows if r["group"] == "main"}
    budgets = common.PAPER_BUDGETS
    papers = list(common.PAPER_RELATIVE)
    lines = ["Accuracy % (relative score = pruned / all tokens × 100); the paper's relative scores at the same "
             "budgets beside.", "",
             "| method | " + " | ".join(f"{100 * b:.1f} %" for b in budgets) + " | " +
             " | ".join(f"paper {p}" for p in papers) + " |",
             "|---|" + "---:|" * len(budgets) + "---|" * len(papers),
             "| " + " | ".join(["all tokens", f"{100 * full['accuracy']:.1f}"] + [""] * (len(budgets) - 1 + len(papers)))
             + " |"]
    for method in methods:
        paper = [" / ".join(map(str, common.PAPER_RELATIVE[p][method])) if method in common.PAPER_RELATIVE[p]
                 else "" for p in papers]
        lines.append(f"| {method} | " + " | ".join(cell(main[method, b]) for b in budgets) + " | " +
                     " | ".join(paper) + " |")
    n, p = full["n"], full["accuracy"]
    lines += ["", f"n = {n}: one question is {100 / n:.1f} points; the binomial standard error of the all-token "
              f"accuracy is ±{100 * (p * (1 - p) / n) ** 0.5:.1f} points.", "",
              "Answers identical to the all-token answer (%):", "",
              "| method | " + " | ".join(f"{100 * b:.1f} %" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    lines += [f"| {method} | " + " | ".join(f"{100 * main[method, b]['agreement']:.1f}" for b in budgets) + " |"
              for method in methods]
    lines += ["", "Evidence recall (%): share of the evidence patches (visual tokens overlapping the question's "
              "ground-truth boxes, method.md §8.5) the kept set holds, mean over questions with evidence:", "",
              "| method | " + " | ".join(f"{100 * b:.1f} %" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    lines += [f"| {method} | " + " | ".join(recall_cell(main[method, b]) for b in budgets) + " |" for method in methods]
    types = [k[len("accuracy_"):] for k in full if k.startswith("accuracy_")]
    lowest = min(budgets)
    lines += ["", f"Accuracy % per question type, all tokens and {100 * lowest:.1f} % kept:", "",
              "| method | " + " | ".join(t.replace("_", " ") for t in types) + " |",
              "|---|" + "---:|" * len(types)]
    for method in ("all tokens",) + tuple(methods):
        row = full if method == "all tokens" else main[method, lowest]
        lines.append(f"| {method} | " + " | ".join(f"{100 * row['accuracy_' + t]:.1f}" for t in types) + " |")
    ablations = [r for r in rows if r["group"] == "ablation"]
    ablation_budgets = sorted(dict.fromkeys(r["budget"] for r in ablations), reverse=True)
    lines += [] if not ablations else ["", "iwp ablations, accuracy % (relative score); paper: LLaVA-OV-7B at 35.3 %; "
              "the query rows (method.md §8.1, ours) at the paper's three budgets:", "",
              "| setting | value | " + " | ".join(f"{100 * b:.1f} %" for b in ablation_budgets) + " | paper |",
              "|---|---|" + "---:|" * len(ablation_budgets) + "---:|"]
    for setting, value in dict.fromkeys((r["setting"], r["value"]) for r in ablations):
        found = {r["budget"]: r for r in ablations if (r["setting"], r["value"]) == (setting, value)}
        cells = [cell(found[b]) if b in found else "" for b in ablation_budgets]
        paper = PAPER_ABLATIONS[setting].get(value, "")
        lines.append(f"| {setting} | {value} | " + " | ".join(cells) + f" | {paper} |")
    if ("iwp-magnitude", lowest) in main and ("iwp", lowest) in main:
        lines += ["", f"Magnitude only (iwp-magnitude) vs. magnitude + duplication (iwp) at {100 * lowest:.1f} %: "
                  f"{cell(main['iwp-magnitude', lowest])} vs. {cell(main['iwp', lowest])} (paper, LLaVA-OV-7B: "
                  "87.9 vs. 90.5)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = common.parser("accuracy", __doc__.split("\n")[0], n=300, quick_n=3)
    p.add_argument("--methods", default=",".join(common.MAIN_METHODS), help="comma-separated registry names")
    args = p.parse_args(argv)
    n = common.question_count(args)
    methods = common.method_names(args.methods)
    session, model = common.load(args)
    samples = common.questions(session, n, args.seed)
    curve = CURVE_BUDGETS if not args.quick else (0.111, 0.222, 0.353, 1.0)
    start = time.perf_counter()
    ablation_budgets = ABLATION_BUDGETS if "iwp" in methods else ()
    results = [predict(session, s, methods, curve, ablation_budgets, common.PAPER_BUDGETS)
               for s in common.progress(samples, "accuracy")]
    predictions, recalls = [r[0] for r in results], [r[1] for r in results]
    seconds = time.perf_counter() - start
    from dualview.methods import get_method

    first = session.analyze(session.prepare(samples[0].image, samples[0].question))
    layers = {m: get_method(m).prune_layer(first) for m in set(methods) | {"iwp"}}
    rows = summarise(samples, predictions, recalls, first.num_visual, layers)
    print_tables(rows, common.PAPER_BUDGETS, methods)
    record = common.header("accuracy", args, model, n)
    record.update(seconds=seconds, seconds_per_question=seconds / n, num_visual=first.num_visual,
                  default_layer=session.default_layer, prune_layers=layers,
                  full_accuracy=common.accuracy_by_type(samples, [p[("full",)] for p in predictions]),
                  questions=[{"question": s.question, "qtype": s.qtype, "answer": s.answer, "full": p[("full",)]}
                             for s, p in zip(samples, predictions)])
    stem = "accuracy" + common.suffix(args)
    written = common.write(args.out, stem, record, rows)
    written.append(common.write_markdown(args.out, stem, record, markdown(rows, methods)))
    written += common.save_figure(accuracy_curve(rows, record["full_accuracy"]["overall"]), args.out, stem + "-curve")
    print(f"\n{n} questions in {seconds:.0f} s ({seconds / n:.2f} s per question); wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
