"""Command line: ``python -m dualview answer|analyze|restore|sweep ...`` (JSON with ``--json``).

``--help`` stays fast: torch and transformers are imported only when a command runs.
Errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other error
        self.exit(2, f"dualview: error: {message} (see --help)\n")


def _param(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` as (name, text); the registry checks and converts the value."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=VALUE")
    return name.strip(), value


def _params_help() -> str:
    """Every method's parameters, from the registry (imports no torch)."""
    from dualview.methods import all_methods

    lines = []
    for method in all_methods():
        if method.params:
            described = "; ".join(f"{p.name}={p.default if p.is_choice else format(p.default, 'g')} ({p.help}, {p.bounds})"
                                  for p in method.params)
            lines.append(f"{method.name}: {described}")
    return "method parameter NAME=VALUE (repeatable). " + " | ".join(lines)


MAX_NEW_TOKENS = 512


def _whole_number(high: int):
    """An argparse type: a whole number from 1 to ``high``, or argparse's one-line error."""

    def parse(text: str) -> int:
        try:
            count = int(text)
        except ValueError:
            count = 0
        if not 1 <= count <= high:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number from 1 to {high}")
        return count

    return parse



QUERY_HELP = ("query rows the analysis reads: text (the instruction tokens, default), last (the last prompt "
              "position), all (every non-image position) or token:i (instruction token i); method.md §8.1")


def _tokens(text: str) -> list[int]:
    """``"3,17,40"`` as visual-token indices (range-checked once the model is loaded)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of token indices") from None


def _kept(prepared, selection, args) -> "torch.Tensor":
    """The method's kept set with the command line's forced keeps and drops (as the app applies them)."""
    import torch

    from dualview.selection import apply_overrides

    for forced in (args.force_keep, args.force_drop):
        prepared.check_kept(forced)
    return torch.tensor(apply_overrides(selection.kept.tolist(), args.force_keep, args.force_drop), dtype=torch.long)


def _add_selection(parser) -> None:
    from dualview.methods import method_names

    parser.add_argument("--method", default="iwp", help=f"one of: {', '.join(method_names())} (default iwp)")
    parser.add_argument("--budget", default="0.111",
                        help="visual tokens to keep: a count, a fraction in (0, 1] or a percentage (default 0.111)")
    parser.add_argument("--param", type=_param, action="append", default=[], metavar="NAME=VALUE", help=_params_help())
    parser.add_argument("--max-new-tokens", type=_whole_number(MAX_NEW_TOKENS), default=16,
                        help=f"1 to {MAX_NEW_TOKENS} (default 16)")
    parser.add_argument("--force-keep", type=_tokens, default=[], metavar="I,J,...",
                        help="visual tokens to keep whatever the method chose (the app's force keep)")
    parser.add_argument("--force-drop", type=_tokens, default=[], metavar="I,J,...",
                        help="visual tokens to drop whatever the method chose (the app's force drop)")


def _add_model_options(parser) -> None:
    """--model, --layer, --device, --dtype and --json: what every command takes."""
    parser.add_argument("--model", default="builtin",
                        help="'builtin' (default), a model directory, or a Hugging Face id on disk")
    parser.add_argument("--layer", default=None,
                        help="decoder layer to analyse, and where iwp-style methods prune "
                             "(default: 4, or max(1, L//4) for models under 8 layers)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the first available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m dualview",
                     description="Look inside visual-token pruning of vision-language models (IWP).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _Parser(add_help=False)
    common.add_argument("--image", required=True, help="image file (PNG, JPEG, ...)")
    common.add_argument("--prompt", required=True, help="the question about the image")
    _add_model_options(common)

    answer = commands.add_parser("answer", parents=[common],
                                 help="answer with all visual tokens and with a pruned set",
                                 description="Answer with all visual tokens and with the kept set of a method; "
                                             "the kept set's measures, its kept attention mass and the split of "
                                             "the attention-output change (method.md §6, §8.2-8.3).")
    _add_selection(answer)
    answer.add_argument("--query", default=None, help=QUERY_HELP + " for the kept mass and the split "
                                                                   "(default: the method's query parameter, else text)")

    analyze = commands.add_parser("analyze", parents=[common], help="scores of every visual token at the analysis layer",
                                  description="Scores of every visual token at the analysis layer (magnitude, "
                                              "duplication, FastV attention, attention received from the chosen "
                                              "queries, update share of W) and their image boxes.")
    analyze.add_argument("--query", default="text", help=QUERY_HELP)

    restore = commands.add_parser(
        "restore", parents=[common], help="which dropped visual tokens bring a changed answer back",
        description="When a method's kept set changes the answer, add dropped visual tokens back one at a time, "
                    "the one that raises log p(full answer) most first (shortlists ordered by the first-order "
                    "effect), until the answer returns or --max-calls forward passes are spent (method.md §8.4).")
    _add_selection(restore)
    from dualview.validation import MAX_SEARCH_CALLS

    restore.add_argument("--max-calls", type=_whole_number(MAX_SEARCH_CALLS), default=64,
                         help="forward passes the search may spend (default 64)")
    restore.add_argument("--width", type=_whole_number(MAX_SEARCH_CALLS), default=8,
                         help="dropped tokens scored exactly per step, best first by the first-order effect (default 8)")
    _add_sweep(commands)
    return parser


def _add_sweep(commands) -> None:
    from dualview import sweep

    parser = commands.add_parser(
        "sweep", help="methods x budgets x seeds over many images: which answers flip",
        description="Answer every item (the shipped examples, or a folder of images with a CSV/JSON prompts file) "
                    "with every method, budget and seed; one analysis and one full answer per item serve them all. "
                    "Prints the flip table (share of pruned answers that differ from the full answer) and the items "
                    f"that flip; --out writes sweep.csv, sweep-summary.csv and sweep.json. At most {sweep.MAX_RUNS} "
                    "pruned answers (items x methods x budgets x seeds, seeds counted for seeded methods only).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--examples", action="store_true", help="sweep the shipped example scenes (ground truth known)")
    source.add_argument("--images", metavar="DIR", help="a folder of your own images")
    parser.add_argument("--prompts", metavar="FILE",
                        help="CSV with the header image,prompt[,expected] or a JSON list of {image, prompt[, expected]}; "
                             "image is a file name in --images (default: DIR/prompts.csv or DIR/prompts.json)")
    parser.add_argument("--methods", default=",".join(sweep.DEFAULT_METHODS),
                        help=f"comma-separated registry names (default {','.join(sweep.DEFAULT_METHODS)})")
    parser.add_argument("--budgets", default=",".join(sweep.DEFAULT_BUDGETS),
                        help="comma-separated counts, fractions or percentages, resolved per image "
                             f"(default {','.join(sweep.DEFAULT_BUDGETS)}, the paper's)".replace("%", "%%"))
    parser.add_argument("--seeds", default=",".join(map(str, sweep.DEFAULT_SEEDS)),
                        help="comma-separated seeds for methods with a seed parameter (random); the others run once "
                             f"(default {','.join(map(str, sweep.DEFAULT_SEEDS))})")
    parser.add_argument("--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
                        help=_params_help() + ". Each applies to every swept method that declares it; the seeds "
                                              "come from --seeds")
    parser.add_argument("--max-new-tokens", type=_whole_number(MAX_NEW_TOKENS), default=16,
                        help=f"1 to {MAX_NEW_TOKENS} (default 16)")
    parser.add_argument("--out", metavar="DIR", help="write sweep.csv, sweep-summary.csv and sweep.json here")
    _add_model_options(parser)


def _rounded(values, digits: int = 6) -> list:
    return [round(float(x), digits) for x in values]


def _answer_dict(answer) -> dict:
    return {"text": answer.text, "token_ids": answer.token_ids, "prefill_seconds": round(answer.prefill_seconds, 4),
            "total_seconds": round(answer.total_seconds, 4), "prompt_tokens": answer.prompt_tokens,
            "kept_tokens": answer.kept_tokens, "layer": answer.layer}


def _model_dict(session) -> dict:
    return {"name": session.name, "family": session.family, "num_layers": session.num_layers,
            "device": str(session.model.device), "dtype": str(session.model.dtype).removeprefix("torch.")}


def load_checked(args):
    """The session and the request of ``args``, checked by the app's own validator
    (:func:`dualview.validation.validate_request`): every cheap check (image, prompt, budget,
    method, parameters, query choice) before the model loads, the layer against the model's depth
    after. ``args.query``, when given, becomes its canonical form."""
    import dualview
    from dualview.queries import canonical_query
    from dualview.validation import validate_request

    if getattr(args, "query", None) is not None:
        args.query = canonical_query(args.query)
    request = validate_request(args.image, args.prompt, getattr(args, "budget", 1), method=getattr(args, "method", "iwp"),
                               layer=args.layer, params=dict(getattr(args, "param", [])))
    session = dualview.load(args.model, device=args.device, dtype=args.dtype)
    request = validate_request(request.image, request.prompt, request.budget, method=request.method,
                               layer=request.layer, params=request.params, num_layers=session.num_layers)
    return session, request


def run_answer(args) -> dict:
    import dualview
    from dualview.methods import get_method
    from dualview.queries import DEFAULT_QUERY

    session, request = load_checked(args)
    prepared = session.prepare(request.image, request.prompt)
    method = get_method(request.method)
    analysis = session.analyze(prepared, layer=request.layer)
    selection = method.select(analysis, request.budget, **request.params)
    kept = _kept(prepared, selection, args)
    layer = method.prune_layer(analysis)
    full = session.answer(prepared, layer=layer, max_new_tokens=args.max_new_tokens)
    pruned = session.answer(prepared, keep=kept, layer=layer, max_new_tokens=args.max_new_tokens)
    measures = analysis.measures(kept)
    query = args.query if args.query is not None else request.params.get("query", DEFAULT_QUERY)
    result = {
        "version": dualview.__version__,
        "model": _model_dict(session),
        "settings": {"method": method.name, "budget": request.budget, "kept_count": int(kept.numel()),
                     "visual_tokens": analysis.num_visual, "analysis_layer": analysis.layer, "prune_layer": layer,
                     "params": request.params, "max_new_tokens": args.max_new_tokens,
                     "force_keep": args.force_keep, "force_drop": args.force_drop,
                     "image": str(args.image), "prompt": request.prompt},
        "full_answer": _answer_dict(full),
        "pruned_answer": _answer_dict(pruned),
        "kept": kept.tolist(),
        "rounds": [chunk.tolist() for chunk in selection.chunks],
        **measures,
        "effective_rank_full": analysis.effective_rank(range(analysis.num_visual)),
        "attention_split": analysis.debug_measures(kept, query),
    }
    if full.text:
        result["full_answer_logprob"] = {
            "all_tokens": session.answer_logprob(prepared, full, layer=layer),
            "kept_tokens": session.answer_logprob(prepared, full, keep=kept, layer=layer),
        }
    return result


def run_analyze(args) -> dict:
    import dualview

    session, request = load_checked(args)
    analysis = session.analyze(session.prepare(request.image, request.prompt), layer=request.layer)
    prepared = analysis.prepared
    received, share = analysis.attention_received_by(args.query), analysis.update_share()
    return {
        "version": dualview.__version__,
        "model": _model_dict(session),
        "settings": {"analysis_layer": analysis.layer, "fastv_layer": analysis.fastv_layer,
                     "query": args.query, "image": str(args.image), "prompt": request.prompt},
        "sequence_length": prepared.length,
        "visual_positions": prepared.visual_positions.tolist(),
        "text_positions": prepared.text_positions.tolist(),
        "geometry": analysis.geometry.to_dict(),
        "query_positions": analysis.query_rows(args.query).tolist(),
        "magnitude": _rounded(analysis.magnitude_for(args.query)),
        "kernel_logit": _rounded(analysis.kernel_logit),
        "value_norm": _rounded(analysis.value_norm),
        "token_duplication": _rounded(analysis.token_duplication),
        "attention_received": _rounded(analysis.attention_received, 8),
        "attention_received_by_query": _rounded(received.mean(dim=0), 8),
        "attention_received_by_query_per_head": [_rounded(row, 8) for row in received],
        "update_share": _rounded(share.mean(dim=0)),
        "update_share_per_head": [_rounded(row) for row in share],
    }


def run_restore(args) -> dict:
    import dualview
    from dualview.engine.attribution import FirstOrderEffect, restore_answer
    from dualview.methods import get_method

    session, request = load_checked(args)
    prepared = session.prepare(request.image, request.prompt)
    method = get_method(request.method)
    analysis = session.analyze(prepared, layer=request.layer)
    kept = _kept(prepared, method.select(analysis, request.budget, **request.params), args)
    layer = method.prune_layer(analysis)
    full = session.answer(prepared, layer=layer, max_new_tokens=args.max_new_tokens)
    pruned = session.answer(prepared, keep=kept, layer=layer, max_new_tokens=args.max_new_tokens)
    found = restore_answer(session, prepared, kept, full, layer, max_calls=args.max_calls, width=args.width)
    return {
        "version": dualview.__version__,
        "model": _model_dict(session),
        "settings": {"method": method.name, "budget": request.budget, "kept_count": int(kept.numel()),
                     "visual_tokens": analysis.num_visual, "prune_layer": layer, "params": request.params,
                     "max_calls": args.max_calls, "width": args.width, "max_new_tokens": args.max_new_tokens,
                     "image": str(args.image), "prompt": request.prompt},
        "full_answer": _answer_dict(full),
        "pruned_answer": _answer_dict(pruned),
        "kept": kept.tolist(),
        "answer_token_ids": found.answer_ids,
        "full_logprob": found.full_logprob,
        "pruned_logprob": found.pruned_logprob,
        "changed": found.changed,
        "order": found.order,
        "curve": found.curve,
        "calls": found.calls,
        "restored": found.restored,
        "first_order": {"label": FirstOrderEffect.LABEL, "layer": found.first_order.layer,
                        "effect": _rounded(found.first_order.effect, 8)},
    }


def run_sweep(args):
    """The sweep of ``args`` (:mod:`dualview.sweep`) and the files written (``--out``): every cheap
    check (methods, budgets, seeds, parameters, layer, items, the work bound) before the model loads."""
    import dualview
    from dualview import sweep
    from dualview.validation import parse_layer

    runs, notes = sweep.plan(args.methods, args.budgets, args.seeds,
                             sweep.shared_params(sweep.parse_list(args.methods, "methods"), args.param))
    parse_layer(args.layer)
    if args.examples:
        from dualview.app.examples import load_examples

        items = sweep.items_from_examples(load_examples())
    else:
        items = sweep.items_from_file(args.images, args.prompts)
    sweep.check_work(len(items), len(runs))
    session = dualview.load(args.model, device=args.device, dtype=args.dtype)
    progress = None
    if sys.stderr.isatty():  # stderr carries errors only, except this line on a terminal
        def progress(done, total, name):
            print(f"\r{done}/{total} items ({name})", end="\n" if done == total else "", file=sys.stderr, flush=True)
    result = sweep.run_sweep(session, items, runs, layer=args.layer, max_new_tokens=args.max_new_tokens,
                             progress=progress, notes=notes)
    return {"sweep": result, "written": result.write(args.out) if args.out else []}


def _print_text(command: str, result) -> None:
    if command == "sweep":
        print(result["sweep"].text())
        if result["written"]:
            print("wrote " + ", ".join(result["written"]))
        return
    if command == "answer":
        s = result["settings"]
        print(f"model: {result['model']['name']} ({result['model']['family']}, {result['model']['num_layers']} layers)")
        print(f"method: {s['method']}, kept {s['kept_count']} of {s['visual_tokens']} visual tokens, "
              f"pruning at layer {s['prune_layer']}")
        print(f"full answer:   {result['full_answer']['text']!r}")
        print(f"pruned answer: {result['pruned_answer']['text']!r}")
        print(f"weight error {result['weight_error']:.4f}, effective rank {result['effective_rank']:.2f} "
              f"(all tokens {result['effective_rank_full']:.2f}); visual tokens only: weight error "
              f"{result['visual_weight_error']:.4f}, effective rank {result['visual_effective_rank']:.2f}; "
              f"attention error {result['attention_error']:.4f}")
        a = result["attention_split"]
        print(f"query {a['query']}: kept attention mass {a['kept_mass']:.4f}; output change {a['output_error']:.4f}, "
              f"of which dropped updates {a['dropped_part']:.4f} and normaliser {a['normaliser_part']:.4f} (norms of the "
              "two parts, which add up as vectors, not as norms; relative to the full output, mean over heads)")
    elif command == "restore":
        s = result["settings"]
        print(f"method: {s['method']}, kept {s['kept_count']} of {s['visual_tokens']} visual tokens, "
              f"pruning at layer {s['prune_layer']}")
        print(f"full answer:   {result['full_answer']['text']!r} (log p {result['full_logprob']:.3f} with every token)")
        print(f"pruned answer: {result['pruned_answer']['text']!r} (log p {result['pruned_logprob']:.3f})")
        if not result["changed"]:
            print("the kept set does not change the answer: nothing to bring back")
        else:
            print(f"{'answer back' if result['restored'] else 'answer not back'} after adding {len(result['order'])} "
                  f"tokens ({result['calls']} forward passes)")
            for token, logprob in zip(result["order"], result["curve"][1:]):
                print(f"  + token {token}: log p {logprob:.3f}")
    else:
        print(f"model: {result['model']['name']}, layer {result['settings']['analysis_layer']}, "
              f"{len(result['magnitude'])} visual tokens")
        if not result["geometry"]["spatial"]:
            print(f"note: {result['geometry']['note']}")
        top = sorted(range(len(result["magnitude"])), key=lambda i: -result["magnitude"][i])[:10]
        print("largest magnitude:", ", ".join(f"{i} ({result['magnitude'][i]:.3f})" for i in top))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as transformers_logging

    from dualview.errors import DualviewError

    transformers_logging.disable_progress_bar()  # stderr carries errors only

    try:
        result = {"answer": run_answer, "analyze": run_analyze, "restore": run_restore,
                  "sweep": run_sweep}[args.command](args)
    except DualviewError as error:
        print(f"dualview: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # never a traceback for users; DUALVIEW_DEBUG=1 shows it
        if os.environ.get("DUALVIEW_DEBUG"):
            raise
        print(f"dualview: error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
              "(set DUALVIEW_DEBUG=1 for details)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result["sweep"].to_json() if args.command == "sweep" else result))
    else:
        _print_text(args.command, result)
    return 0
