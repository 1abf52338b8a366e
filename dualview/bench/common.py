"""What the accuracy, error and prefill suites share: options, model and questions, answering,
the per-question pass over methods and budgets, and writing tables, JSON, CSV and figures.

The questions are ``world.heldout_set(n, seed)`` at the model's image size; the default seed
12345 is the one ``python -m dualview.shapes.evaluate`` uses, a stream training never draws
from. Answers are greedy with at most 4 new tokens and compared after
``normalize_answer``, exactly as the evaluation code does, so the full-token accuracy here is
the model's reported accuracy on the same questions.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

MAIN_METHODS = ("iwp", "iwp-magnitude", "mmr", "fastv", "divprune", "cdpruner", "random", "grid")
PAPER_BUDGETS = (0.353, 0.222, 0.111)
"""Fractions of the visual tokens kept in the paper's tables (method.md §4)."""
PAPER_RELATIVE = {  # method.md §7: mean relative score at 35.3 / 22.2 / 11.1 % kept
    "LLaVA-OV-7B": {"iwp": (97.9, 95.6, 90.5), "fastv": (96.7, 94.4, 88.8), "divprune": (91.8, 86.9, 79.8),
                    "cdpruner": (91.7, 91.0, 90.4)},
    "Qwen2.5-VL-7B": {"iwp": (96.8, 93.0, 84.7), "fastv": (92.1, 88.7, 80.2), "divprune": (94.0, 89.2, 80.2),
                      "cdpruner": (90.9, 85.8, 77.2)},
}
HELDOUT_SEED = 12345
MAX_NEW_TOKENS = 4
"""As ``dualview.shapes.model.answer``: every answer of the grammar fits in 4 tokens."""


def parser(suite: str, description: str, n: int, quick_n: int) -> argparse.ArgumentParser:
    """Options every suite takes: --model, --n, --seed, --quick, --out, --threads."""
    p = argparse.ArgumentParser(prog=f"python -m dualview.bench {suite}", description=description)
    p.add_argument("--model", default="builtin", help="'builtin' (assets/shapes-vlm) or a saved shapes-world model directory")
    p.add_argument("--n", type=int, default=None, help=f"held-out questions (default {n}; {quick_n} with --quick)")
    p.add_argument("--seed", type=int, default=HELDOUT_SEED, help="held-out question seed (training never uses it)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    p.add_argument("--out", default="results", help="folder for the JSON, CSV and figures")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(default_n=n, quick_n=quick_n)
    return p


def question_count(args) -> int:
    n = args.n if args.n is not None else (args.quick_n if args.quick else args.default_n)
    if n < 1:
        fail(f"--n must be at least 1, got {n}.")
    return n


def fail(message: str) -> None:
    """Print one sentence and exit with status 2 (bad input, missing model)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def method_names(text: str, extra: tuple = ()) -> tuple:
    """Registered method names from a comma-separated ``--methods`` value (plus ``extra``); an unknown
    name ends the run with one sentence."""
    from dualview.errors import DualviewError
    from dualview.methods import get_method

    methods = tuple(m.strip() for m in text.split(",") if m.strip()) + tuple(extra)
    try:
        for method in methods:
            get_method(method)
    except DualviewError as error:
        fail(str(error))
    return methods


def load(args):
    """(session, model record) for ``args.model``; a DualviewError becomes one line and exit 2."""
    import torch

    import dualview
    from dualview.errors import DualviewError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        session = dualview.load(args.model, device="cpu", dtype="float32")
    except DualviewError as error:
        fail(str(error))
    if session.family != "llava" or not hasattr(session.model.config, "shapes_world"):
        fail(f"'{args.model}' is not a shapes-world model; these suites ask shapes-world questions.")
    return session, model_record(session)


def model_record(session) -> dict:
    """Where the weights came from: directory, sha256 of the weights, git commit of that directory."""
    from dualview.engine.loading import BUILTIN_DIR

    directory = Path(BUILTIN_DIR if session.name == "builtin" else session.name).resolve()
    digest = hashlib.sha256()
    for weights in sorted(directory.glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return {"name": session.name, "path": str(directory), "weights_sha256": digest.hexdigest()[:16],
            "commit": directory_commit(directory), "visual_tokens": session.model.config.image_seq_length,
            "decoder_layers": session.num_layers}


def directory_commit(directory: Path) -> str | None:
    """``"<short hash> <ISO date>"`` of the last git commit that touched ``directory``, followed by
    ``" + uncommitted changes"`` when its files differ from that commit (benchmarks run on weights
    not yet committed say so); None outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", *args, "--", "."], cwd=directory, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("log", "-1", "--format=%h %cI") or None
        return commit and commit + (" + uncommitted changes" if git("status", "--porcelain") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def questions(session, n: int, seed: int) -> list:
    """``n`` held-out samples drawn at the model's input size."""
    from dualview.shapes import world

    return world.heldout_set(n, seed, session.model.config.vision_config.image_size)


class Answers:
    """Normalised greedy answers to one sample, prepared once; each distinct (pruning layer, kept
    set) generated once: methods and settings that choose the same tokens share one generation.
    ``answers(kept, layer)``; ``kept=None`` is the full-token answer. ``prepared`` is the sample's
    prepared input (for analyses)."""

    def __init__(self, session, sample):
        self.session, self.sample = session, sample
        self.prepared = session.prepare(sample.image, sample.question)
        self._known: dict = {}

    def __call__(self, kept=None, layer: int | None = None) -> str:
        from dualview.shapes.model import normalize_answer

        key = None if kept is None else (layer, tuple(sorted(kept.tolist())))
        if key not in self._known:
            self._known[key] = normalize_answer(self.session.answer(self.prepared, keep=kept, layer=layer,
                                                                    max_new_tokens=MAX_NEW_TOKENS).text)
        return self._known[key]


def progress(items, description: str, quiet: bool = False):
    from tqdm import tqdm

    return tqdm(items, desc=description, disable=quiet, dynamic_ncols=True, file=sys.stderr)


def accuracy_by_type(samples, predictions) -> dict:
    """Accuracy per question type (in ``world.QUESTION_TYPES`` order) and ``overall``, in [0, 1]."""
    from dualview.shapes import world

    hits: dict = {}
    for sample, prediction in zip(samples, predictions):
        hits.setdefault(sample.qtype, []).append(prediction == sample.answer)
    result = {t: sum(hits[t]) / len(hits[t]) for t in world.QUESTION_TYPES if t in hits}
    result["overall"] = sum(sum(v) for v in hits.values()) / max(1, len(samples))
    return result


def machine() -> str:
    """CPU model, cores and torch threads (these suites time the CPU)."""
    import os

    import torch

    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        from dualview.bench.selection import machine as torch_machine

        return torch_machine()
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def header(suite: str, args, model: dict, n: int) -> dict:
    import torch

    return {"suite": suite, "command": "python -m dualview.bench " + " ".join([suite] + sys.argv[2:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "torch": torch.__version__, "model": model, "n": n, "seed": args.seed, "quick": args.quick}


def write(out: str | Path, stem: str, record: dict, rows: list[dict]) -> list[Path]:
    """``record`` (with ``rows``) as ``<stem>.json`` and ``rows`` as ``<stem>.csv`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / f"{stem}.json", out / f"{stem}.csv"
    json_path.write_text(json.dumps(dict(record, rows=rows), indent=1))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return [json_path, csv_path]


def write_markdown(out: str | Path, stem: str, record: dict, tables: str) -> Path:
    """``<stem>.md``: the headline tables for the README, under the command, date, machine and model."""
    model = record["model"]
    text = (f"`{record['command']}` — {record['date']}, {record['machine']}, torch {record['torch']}; "
            f"model `{model['name']}` (weights sha256 {model.get('weights_sha256', '-')}, "
            f"commit {model.get('commit') or 'none (not in git)'}); {record['n']} held-out questions, seed {record['seed']}.\n\n"
            + tables)
    path = Path(out) / f"{stem}.md"
    path.write_text(text)
    return path


def save_figure(figure, out: str | Path, stem: str) -> list[Path]:
    """``<stem>.html`` (loading ``plotly.min.js`` written once beside it: works offline) and, when
    kaleido can drive a browser, ``<stem>.png``; without one the PNG is skipped with a note on stderr."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    html = out / f"{stem}.html"
    figure.write_html(html, include_plotlyjs="directory", full_html=True)
    written = [html]
    try:
        figure.write_image(out / f"{stem}.png", width=1100, height=520, scale=1)
        written.append(out / f"{stem}.png")
    except Exception as error:  # kaleido missing or no browser: HTML only
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:120]
        print(f"note: PNG not written ({reason}); the HTML has the figure.", file=sys.stderr)
    return written


def suffix(args) -> str:
    return "-quick" if args.quick else ""
