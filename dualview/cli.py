"""Command line: ``python -m dualview answer|analyze ...`` (JSON with ``--json``).

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
            described = "; ".join(f"{p.name}={p.default:g} ({p.help}, {p.bounds})" for p in method.params)
            lines.append(f"{method.name}: {described}")
    return "method parameter NAME=VALUE (repeatable). " + " | ".join(lines)


MAX_NEW_TOKENS = 512


def _new_tokens(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_NEW_TOKENS:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number from 1 to {MAX_NEW_TOKENS}")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m dualview",
                     description="Look inside visual-token pruning of vision-language models (IWP).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _Parser(add_help=False)
    common.add_argument("--image", required=True, help="image file (PNG, JPEG, ...)")
    common.add_argument("--prompt", required=True, help="the question about the image")
    common.add_argument("--model", default="builtin",
                        help="'builtin' (default), a model directory, or a Hugging Face id on disk")
    common.add_argument("--layer", default=None,
                        help="decoder layer to analyse, and where iwp-style methods prune "
                             "(default: 4, or max(1, L//4) for models under 8 layers)")
    common.add_argument("--device", default=None, help="cuda, mps or cpu (default: the first available)")
    common.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: fp32 on CPU, bf16 on GPU)")
    common.add_argument("--json", action="store_true", help="print one JSON object")

    answer = commands.add_parser("answer", parents=[common],
                                 help="answer with all visual tokens and with a pruned set",
                                 description="Answer with all visual tokens and with the kept set of a method.")
    from dualview.methods import method_names

    answer.add_argument("--method", default="iwp", help=f"one of: {', '.join(method_names())} (default iwp)")
    answer.add_argument("--budget", default="0.111",
                        help="visual tokens to keep: a count, a fraction in (0, 1] or a percentage (default 0.111)")
    answer.add_argument("--param", type=_param, action="append", default=[], metavar="NAME=VALUE", help=_params_help())
    answer.add_argument("--max-new-tokens", type=_new_tokens, default=16, help=f"1 to {MAX_NEW_TOKENS} (default 16)")

    commands.add_parser("analyze", parents=[common], help="scores of every visual token at the analysis layer",
                        description="Scores of every visual token at the analysis layer (magnitude, "
                                    "duplication, FastV attention) and their image boxes.")
    return parser


def _rounded(values, digits: int = 6) -> list:
    return [round(float(x), digits) for x in values]


def _answer_dict(answer) -> dict:
    return {"text": answer.text, "token_ids": answer.token_ids, "prefill_seconds": round(answer.prefill_seconds, 4),
            "total_seconds": round(answer.total_seconds, 4), "prompt_tokens": answer.prompt_tokens,
            "kept_tokens": answer.kept_tokens, "layer": answer.layer}


def _model_dict(session) -> dict:
    return {"name": session.name, "family": session.family, "num_layers": session.num_layers}


def load_checked(args):
    """The session and the request of ``args``, checked by the app's own validator
    (:func:`dualview.validation.validate_request`): every cheap check (image, prompt, budget,
    method, parameters) before the model loads, the layer against the model's depth after."""
    import dualview
    from dualview.validation import validate_request

    request = validate_request(args.image, args.prompt, getattr(args, "budget", 1), method=getattr(args, "method", "iwp"),
                               layer=args.layer, params=dict(getattr(args, "param", [])))
    session = dualview.load(args.model, device=args.device, dtype=args.dtype)
    request = validate_request(request.image, request.prompt, request.budget, method=request.method,
                               layer=request.layer, params=request.params, num_layers=session.num_layers)
    return session, request


def run_answer(args) -> dict:
    import dualview
    from dualview.methods import get_method

    session, request = load_checked(args)
    prepared = session.prepare(request.image, request.prompt)
    method = get_method(request.method)
    analysis = session.analyze(prepared, layer=request.layer)
    selection = method.select(analysis, request.budget, **request.params)
    layer = method.prune_layer(analysis)
    full = session.answer(prepared, layer=layer, max_new_tokens=args.max_new_tokens)
    pruned = session.answer(prepared, keep=selection.kept, layer=layer, max_new_tokens=args.max_new_tokens)
    measures = analysis.measures(selection.kept)
    result = {
        "version": dualview.__version__,
        "model": _model_dict(session),
        "settings": {"method": method.name, "budget": request.budget, "kept_count": int(selection.kept.numel()),
                     "visual_tokens": analysis.num_visual, "analysis_layer": analysis.layer, "prune_layer": layer,
                     "params": request.params, "max_new_tokens": args.max_new_tokens,
                     "image": str(args.image), "prompt": request.prompt},
        "full_answer": _answer_dict(full),
        "pruned_answer": _answer_dict(pruned),
        "kept": selection.kept.tolist(),
        "rounds": [chunk.tolist() for chunk in selection.chunks],
        **measures,
        "effective_rank_full": analysis.effective_rank(range(analysis.num_visual)),
    }
    if full.text:
        result["full_answer_logprob"] = {
            "all_tokens": session.answer_logprob(prepared, full, layer=layer),
            "kept_tokens": session.answer_logprob(prepared, full, keep=selection.kept, layer=layer),
        }
    return result


def run_analyze(args) -> dict:
    import dualview

    session, request = load_checked(args)
    analysis = session.analyze(session.prepare(request.image, request.prompt), layer=request.layer)
    prepared = analysis.prepared
    return {
        "version": dualview.__version__,
        "model": _model_dict(session),
        "settings": {"analysis_layer": analysis.layer, "fastv_layer": analysis.fastv_layer,
                     "image": str(args.image), "prompt": request.prompt},
        "sequence_length": prepared.length,
        "visual_positions": prepared.visual_positions.tolist(),
        "text_positions": prepared.text_positions.tolist(),
        "geometry": analysis.geometry.to_dict(),
        "magnitude": _rounded(analysis.magnitude),
        "kernel_logit": _rounded(analysis.kernel_logit),
        "value_norm": _rounded(analysis.value_norm),
        "token_duplication": _rounded(analysis.token_duplication),
        "attention_received": _rounded(analysis.attention_received, 8),
    }


def _print_text(command: str, result: dict) -> None:
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
        result = run_answer(args) if args.command == "answer" else run_analyze(args)
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
        print(json.dumps(result))
    else:
        _print_text(args.command, result)
    return 0
