"""Sweeps: methods × budgets × seeds over a list of (image, prompt[, expected answer]) items.

For each item the input is prepared, analysed and answered with every visual token ONCE; every
method, budget and seed then selects from that one analysis and answers with its kept set (an
answer is generated once per distinct (pruning layer, kept set) of an item). Only methods with a
``seed`` parameter (today ``random``) run once per seed; the others run once per budget, and the
sweep's notes say so. Everything is deterministic: the same items, model, settings and seeds give
the same rows.

A row (:data:`COLUMNS`) says what was asked (item, method, budget as given, seed), what was kept
(count, pruning layer, a digest of the kept set), both answers, whether the answer flipped
(:func:`dualview.answers.same_answer`), whether each answer is correct when an expected answer is known, log p of
the full answer with every token and under the kept set (scored from the full answer's own
token ids), and the kept set's weight error, effective rank, attention error
(:meth:`Analysis.measures`) and kept attention mass (:meth:`Analysis.debug_measures`, the rows of
the method's ``query`` parameter, else the instruction tokens).

Items come from :func:`items_from_file` (a folder of images with a CSV or JSON list of prompts)
or :func:`items_from_examples` (the shipped example scenes). The work is bounded: at most
:data:`MAX_RUNS` pruned answers per sweep (:data:`MAX_APP_RUNS` from the app). Below the app and
the CLI, above the engine and the method registry; torch is not imported here, so the CLI's
``--help`` may read the limits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from dualview.answers import same_answer
from dualview.budget import resolve_budget
from dualview.errors import DualviewError
from dualview.validation import parse_layer, validate_request

__all__ = ["Item", "Run", "Sweep", "plan", "run_sweep", "items_from_file", "items_from_examples", "parse_list",
           "parse_seeds", "shared_params", "MAX_RUNS", "MAX_APP_RUNS", "APP_EXCLUDED", "DEFAULT_METHODS",
           "DEFAULT_BUDGETS", "DEFAULT_SEEDS", "COLUMNS"]

MAX_RUNS = 2000
"""The most pruned answers one sweep may ask for (items × runs per item), from the CLI or the API.
Seen on this project's shared 2-core CPU under load: about 1 s per pruned answer on the built-in
model (the default sweep of the 8 examples, 168 answers, in 2 min 44 s), about 5 s per model call
at 7 209 visual tokens (LLaVA-OneVision's geometry at tiny widths); a real 7B model on a CPU is far
slower, so split its sweeps well below this limit."""
MAX_APP_RUNS = 200
"""The same bound for the app's Sweep button (its visitor shares the model with everyone else)."""
APP_EXCLUDED = ("oracle",)
"""Methods the app's Sweep button does not run: the greedy oracle costs O(S²) per kept token."""
DEFAULT_METHODS = ("iwp", "iwp-magnitude", "fastv", "divprune", "random")
DEFAULT_BUDGETS = ("35.3%", "22.2%", "11.1%")
"""The paper's budgets (method.md §4)."""
DEFAULT_SEEDS = (0, 1, 2)
SEED = "seed"
"""The parameter a method must declare to be run once per seed."""
COLUMNS = ("item", "prompt", "expected", "method", "budget", "seed", "visual_tokens", "kept", "prune_layer",
           "full_answer", "pruned_answer", "flipped", "full_correct", "correct", "full_logprob", "pruned_logprob",
           "logprob_drop", "weight_error", "effective_rank", "attention_error", "kept_mass", "kept_digest")
"""A row's fields, in CSV order (see the module docstring; log p in nats, drop = full − pruned)."""
PROMPT_FILES = ("prompts.csv", "prompts.json")
"""The prompts file looked for in an image folder when none is named."""


@dataclass(frozen=True)
class Item:
    """One question: ``image`` (a path, or anything :func:`dualview.images.load_image` decodes),
    ``prompt``, the ``expected`` answer (None when unknown) and the ``name`` rows call it by."""

    name: str
    image: object
    prompt: str
    expected: str | None = None


@dataclass(frozen=True)
class Run:
    """One selection per item: a registered ``method``, a ``budget`` as given (count, fraction or
    percentage text, resolved per image), the ``seed`` (None for a method without one) and every
    parameter of the method, checked (the seed included)."""

    method: str
    budget: str
    seed: int | None
    params: dict = field(default_factory=dict)


def parse_list(value, what: str) -> list[str]:
    """``"a, b,c"`` (or a list of values) as stripped non-empty texts; one sentence when it is
    empty or names one entry twice. ``what`` names the list in the sentence (e.g. "budgets")."""
    parts = [str(part).strip() for part in (value.split(",") if isinstance(value, str) else (value or []))]
    parts = [part for part in parts if part]
    if not parts:
        raise DualviewError(f"The sweep needs at least one of its {what}; give a comma-separated list.")
    twice = sorted({part for part in parts if parts.count(part) > 1})
    if twice:
        raise DualviewError(f"The {what} list names {', '.join(twice)} more than once; give each once.")
    return parts


def parse_seeds(value, method: str = "random") -> list[int]:
    """Seeds from ``"0,1,2"`` (or a list), each checked against ``method``'s seed parameter."""
    from dualview.methods import get_method

    declared = get_method(method).param(SEED)
    seeds = [declared.check(seed, method) for seed in parse_list(value, "seeds")]
    twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if twice:
        raise DualviewError(f"The seeds list names {', '.join(map(str, twice))} more than once; give each once.")
    return seeds


def shared_params(methods, pairs) -> dict[str, dict]:
    """The CLI's ``--param NAME=VALUE`` pairs for a sweep: each applies to every swept method that
    declares ``NAME`` (by method name); a name no swept method has, or the seed (the sweep's seeds
    set it), gives one sentence."""
    from dualview.methods import get_method

    chosen = [get_method(name) for name in methods]
    given: dict[str, dict] = {m.name: {} for m in chosen}
    for name, value in pairs:
        if name == SEED:
            raise DualviewError("The sweep sets the seed itself; give the seeds with --seeds, not --param seed=...")
        owners = [m for m in chosen if name in {p.name for p in m.params}]
        if not owners:
            raise DualviewError(f"No swept method has a parameter {name!r} (the swept methods' parameters: "
                                f"{', '.join(sorted({p.name for m in chosen for p in m.params})) or 'none'}).")
        for method in owners:
            given[method.name][name] = value
    return given


def plan(methods, budgets, seeds=DEFAULT_SEEDS, params: dict | None = None) -> tuple[list[Run], list[str]]:
    """The runs of a sweep and its notes.

    Args:
        methods: registry names (or a comma-separated text); budgets: counts, fractions or
            percentages (or a comma-separated text), each checked by :func:`resolve_budget` (and
            again per image); seeds: whole numbers (or text), used by methods with a seed;
        params: per method name, parameter overrides (text or numbers; the others keep the
            registry's defaults); never the seed.
        Without a seeded method the seeds are not read (they may be blank).
    Returns:
        (runs in method, budget, seed order; notes: which methods run once per budget because they
        have no seed, and which methods the seeds apply to).
    Raises:
        DualviewError: an unknown method, a bad budget, seed or parameter, an empty list.
    """
    from dualview.methods import get_method

    names = parse_list(methods, "methods")
    budgets = parse_list(budgets, "budgets")
    for budget in budgets:
        resolve_budget(budget)
    chosen = [get_method(name) for name in names]
    params = dict(params or {})
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise DualviewError(f"Parameters were given for {', '.join(unknown)}, which the sweep does not run.")
    seeded = [m.name for m in chosen if SEED in {p.name for p in m.params}]
    seed_list = [parse_seeds(seeds, name) for name in seeded][-1] if seeded else []  # unused (may be blank) without one
    runs = []
    for method in chosen:
        overrides = dict(params.get(method.name) or {})
        if SEED in overrides:
            raise DualviewError("The sweep sets the seed itself; give the seeds as the sweep's seeds, not as a parameter.")
        checked = method.check_params(overrides)
        for budget in budgets:
            for seed in seed_list if method.name in seeded else [None]:
                runs.append(Run(method.name, budget, seed, dict(checked, **({SEED: seed} if seed is not None else {}))))
    notes = []
    once = [m.name for m in chosen if m.name not in seeded]
    if once:
        notes.append(f"{', '.join(once)} {'has' if len(once) == 1 else 'have'} no seed: run once per budget"
                     + (f"; the seeds {', '.join(map(str, seed_list))} apply to {', '.join(seeded)}." if seeded else "."))
    return runs, notes


def check_work(items: int, runs: int, limit: int = MAX_RUNS) -> None:
    """One sentence when there are no items or runs, or ``items`` × ``runs`` pruned answers exceed ``limit``."""
    if not items:
        raise DualviewError("The sweep has no items; give at least one image and prompt.")
    if not runs:
        raise DualviewError("The sweep has no runs; give at least one method and budget.")
    if items * runs > limit:
        raise DualviewError(f"This sweep asks for {items} items × {runs} runs = {items * runs} pruned answers, more than "
                            f"the limit of {limit}; sweep fewer items, methods, budgets or seeds.")


# -- items ----------------------------------------------------------------------------------


def items_from_examples(examples: list[dict]) -> list[Item]:
    """Items of the shipped example scenes (``dualview.app.examples.load_examples``: name, path,
    question, ground-truth answer)."""
    return [Item(e["name"], e["path"], e["question"], e.get("answer")) for e in examples]


def _prompts_file(folder: Path, prompts) -> Path:
    if prompts is not None:
        path = Path(prompts)
        if not path.is_file():
            raise DualviewError(f"No prompts file at {str(path)!r}; give a CSV or JSON file of image, prompt "
                                "and (optionally) expected answer.")
        return path
    for name in PROMPT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise DualviewError(f"The folder {str(folder)!r} has no {' or '.join(PROMPT_FILES)}; name the prompts file.")


def _records(path: Path) -> list[dict]:
    """The rows of a prompts file as dicts (CSV with a header row, or a JSON list of objects)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DualviewError(f"The prompts file {path.name!r} is not UTF-8 text (byte {error.start}); save it as "
                            "UTF-8.") from None
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DualviewError(f"The prompts file {path.name!r} is not valid JSON (line {error.lineno}).") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise DualviewError(f"The prompts file {path.name!r} must hold a JSON list of objects with the keys "
                                "image, prompt and (optionally) expected.")
        return records
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    if not {"image", "prompt"} <= set(header):
        raise DualviewError(f"The prompts file {path.name!r} needs a header row with the columns image, prompt and "
                            f"(optionally) expected; its first row is {', '.join(header) or 'empty'}.")
    return [{(k or "").strip(): v for k, v in row.items()} for row in reader]


def items_from_file(folder, prompts=None) -> list[Item]:
    """Items of a folder of images and a prompts file.

    Args:
        folder: the images' folder; prompts: a CSV file (header ``image,prompt[,expected]``) or a
            JSON list of ``{"image", "prompt"[, "expected"]}``; default ``prompts.csv`` or
            ``prompts.json`` in the folder. ``image`` is a file name inside the folder.
    Returns:
        the items in file order, named by their image file name (with ``#2``, ``#3`` ... for an
        image asked about more than once). Images are decoded when the sweep runs.
    Raises:
        DualviewError: a missing folder or file, a row without image or prompt, an image not in
        the folder, no rows (one sentence, naming the row).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DualviewError(f"No image folder at {str(folder)!r}; give the folder that holds the images.")
    path = _prompts_file(folder, prompts)
    records = _records(path)
    if not records:
        raise DualviewError(f"The prompts file {path.name!r} has no rows; add one row per image and prompt.")
    root, items, seen = folder.resolve(), [], {}
    for number, record in enumerate(records, start=1):
        name, prompt = str(record.get("image") or "").strip(), record.get("prompt")
        expected = record.get("expected")
        where = f"Row {number} of {path.name!r}"
        if not name or not isinstance(prompt, str) or not prompt.strip():
            raise DualviewError(f"{where} needs an image file name and a prompt.")
        image = (folder / name).resolve()
        if root not in image.parents or not image.is_file():
            raise DualviewError(f"{where} names the image {name!r}, which is not in the folder {str(folder)!r}.")
        seen[name] = seen.get(name, 0) + 1
        expected = None if expected is None or str(expected).strip() == "" else str(expected).strip()
        items.append(Item(name if seen[name] == 1 else f"{name}#{seen[name]}", str(image), prompt.strip(), expected))
    return items


# -- the sweep ------------------------------------------------------------------------------


@dataclass
class Sweep:
    """A sweep's rows (:data:`COLUMNS`, one per item and run, in item, method, budget, seed order),
    the kept set of each row (visual-token indices in selection order, parallel to ``rows``), the
    settings it ran with and its notes. :meth:`flip_table`, :meth:`item_flips` summarise it."""

    rows: list[dict]
    kept: list[list[int]]
    settings: dict
    notes: list[str]

    def _groups(self) -> dict:
        groups: dict = {}
        for row in self.rows:
            groups.setdefault((row["method"], row["budget"]), []).append(row)
        return groups

    def flip_table(self) -> list[dict]:
        """One entry per (method, budget): ``flip_rate`` over every row (items × seeds), and for a
        seeded method the per-seed flip rates' ``flip_sd`` (population sd), ``flip_min``,
        ``flip_max`` (None otherwise); ``flips`` and ``answers`` (counts); ``accuracy`` of the
        pruned answers over rows with an expected answer (None when none has); the means of
        ``logprob_drop``, ``weight_error`` and ``kept_mass``."""
        table = []
        for (method, budget), rows in self._groups().items():
            seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
            per_seed = [_mean([r["flipped"] for r in rows if r["seed"] == s]) for s in seeds]
            judged = [r["correct"] for r in rows if r["correct"] is not None]
            table.append({
                "method": method, "budget": budget, "seeds": len(seeds) or None,
                "flips": sum(r["flipped"] for r in rows), "answers": len(rows),
                "flip_rate": _mean([r["flipped"] for r in rows]),
                "flip_sd": _sd(per_seed) if seeds else None,
                "flip_min": min(per_seed) if seeds else None, "flip_max": max(per_seed) if seeds else None,
                "accuracy": _mean(judged) if judged else None,
                "mean_logprob_drop": _mean([r["logprob_drop"] for r in rows]),
                "mean_weight_error": _mean([r["weight_error"] for r in rows]),
                "mean_kept_mass": _mean([r["kept_mass"] for r in rows]),
            })
        return table

    def item_flips(self) -> list[dict]:
        """Per item: its prompt, expected and full answers, and ``flips``: method -> the budgets at
        which its answer flipped, each as ``{"budget", "seeds_flipped", "seeds"}`` (seeds None for
        a method without one); methods that never flip it are left out."""
        found: dict = {}
        for row in self.rows:
            entry = found.setdefault(row["item"], {"item": row["item"], "prompt": row["prompt"],
                                                   "expected": row["expected"], "full_answer": row["full_answer"],
                                                   "flips": {}})
            budgets = entry["flips"].setdefault(row["method"], {})
            cell = budgets.setdefault(row["budget"], {"budget": row["budget"], "seeds_flipped": 0, "seeds": 0})
            cell["seeds_flipped"] += bool(row["flipped"])
            cell["seeds"] += 1
        for entry in found.values():
            entry["flips"] = {method: [dict(c, seeds=c["seeds"] if self._seeded(method) else None)
                                       for c in cells.values() if c["seeds_flipped"]]
                              for method, cells in entry["flips"].items()}
            entry["flips"] = {method: cells for method, cells in entry["flips"].items() if cells}
        return list(found.values())

    def _seeded(self, method: str) -> bool:
        return any(r["seed"] is not None for r in self.rows if r["method"] == method)

    def full_accuracy(self) -> float | None:
        """Share of items whose full answer is the expected one (None when no item has one)."""
        judged = {r["item"]: r["full_correct"] for r in self.rows if r["full_correct"] is not None}
        return _mean(list(judged.values())) if judged else None

    def _cells(self, cell) -> tuple[list[str], list[list[str]]]:
        """A method × budget table of :meth:`flip_table` entries as text: headers (method, then each
        budget as given) and one row per method (a seeded method's label says how many seeds)."""
        budgets = list(dict.fromkeys(r["budget"] for r in self.rows))
        methods = list(dict.fromkeys(r["method"] for r in self.rows))
        entries = {(e["method"], e["budget"]): e for e in self.flip_table()}
        return ["method"] + budgets, [
            [method + (_count(entries[method, budgets[0]]["seeds"], "seed", " ({})") if self._seeded(method) else "")]
            + [cell(entries[method, budget]) for budget in budgets] for method in methods]

    def summary_cells(self) -> tuple[list[str], list[list[str]]]:
        """The flip table as text cells (:meth:`_cells`): ``"12.5% (1/8)"`` (flip rate, flips /
        answers), for a seeded method ``"16.7% ±5.9 [12.5-25.0] (4/24)"`` (mean over seeds ± sd,
        range of the per-seed rates). What the CLI prints and the app shows."""

        def cell(e):
            spread = f" ±{100 * e['flip_sd']:.1f} [{100 * e['flip_min']:.1f}-{100 * e['flip_max']:.1f}]" if e["seeds"] else ""
            return f"{100 * e['flip_rate']:.1f}%{spread} ({e['flips']}/{e['answers']})"

        return self._cells(cell)

    def accuracy_cells(self) -> tuple[list[str], list[list[str]]]:
        """The pruned answers' accuracy per method and budget as text cells ("-" without expected answers)."""
        return self._cells(lambda e: "-" if e["accuracy"] is None else f"{100 * e['accuracy']:.1f}%")

    def item_cells(self) -> tuple[list[str], list[list[str]]]:
        """Which items flip for which methods, as text cells: headers (item, full answer, each
        method) and one row per item; a cell lists the budgets that flip it, with ``(k/n seeds)``
        for a seeded method."""
        methods = list(dict.fromkeys(r["method"] for r in self.rows))
        lines = []
        for entry in self.item_flips():
            line = [entry["item"], entry["full_answer"]]
            for method in methods:
                line.append(", ".join(c["budget"] + (f" ({c['seeds_flipped']}/{c['seeds']} seeds)" if c["seeds"] else "")
                                      for c in entry["flips"].get(method, [])))
            lines.append(line)
        return ["item", "full answer"] + methods, lines

    def to_json(self) -> dict:
        """Everything as one JSON-ready dict: settings, notes, summary, item flips, rows."""
        import dualview

        return {"version": dualview.__version__, "settings": self.settings, "notes": self.notes,
                "full_accuracy": self.full_accuracy(), "summary": self.flip_table(),
                "item_flips": self.item_flips(), "rows": self.rows}

    def csv_text(self) -> str:
        """The rows as CSV (header :data:`COLUMNS`; None is an empty cell, booleans True/False)."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()

    def text(self) -> str:
        """The flip table, the accuracy and the items that flip, as plain text (what the CLI prints)."""
        items = len({r["item"] for r in self.rows})
        headers, lines = self.summary_cells()
        out = [f"flip rate: share of answers that differ from the full answer ({_count(items, 'item')}; a seeded method: "
               "mean over seeds ±sd [range of the per-seed rates])", _aligned(headers, lines)]
        accuracy = self.full_accuracy()
        if accuracy is not None:
            out.append(f"accuracy of the full answers: {100 * accuracy:.1f}%; of the pruned answers:")
            out.append(_aligned(*self.accuracy_cells()))
        headers, lines = self.item_cells()
        flipping = [line for line in lines if any(line[2:])]
        out.append(f"items that flip ({len(flipping)} of {items}): the budgets at which each method flips them"
                   if flipping else "no item flips")
        if flipping:
            out.append(_aligned(headers, flipping))
        out += [f"note: {note}" for note in self.notes]
        return "\n".join(out)

    def write(self, folder) -> list[str]:
        """``sweep.csv`` (the rows), ``sweep-summary.csv`` (the flip table) and ``sweep.json``
        (:meth:`to_json`) in ``folder`` (created); their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rows, summary, data = folder / "sweep.csv", folder / "sweep-summary.csv", folder / "sweep.json"
        rows.write_text(self.csv_text(), encoding="utf-8")
        table = self.flip_table()
        with open(summary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(table)
        data.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False), encoding="utf-8")
        return [str(rows), str(summary), str(data)]


def _count(number: int, noun: str, frame: str = "{}") -> str:
    return frame.format(f"{number} {noun}{'' if number == 1 else 's'}")


def _mean(values) -> float:
    return sum(float(v) for v in values) / len(values)


def _sd(values) -> float:
    mean = _mean(values)
    return math.sqrt(sum((float(v) - mean) ** 2 for v in values) / len(values))


def _aligned(headers: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *lines)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [headers] + lines)


def _digest(kept) -> str:
    """A short digest of a kept set (its sorted indices): equal digests, equal sets."""
    return hashlib.sha256(",".join(map(str, sorted(kept))).encode()).hexdigest()[:12]


def run_sweep(session, items: list[Item], runs: list[Run], *, layer=None, max_new_tokens: int = 16,
              limit: int = MAX_RUNS, guard=None, progress=None, notes=()) -> Sweep:
    """Run every run of :func:`plan` on every item with a loaded model.

    Every item is checked first (image decoded, prompt, length, each budget against its visual
    tokens), before any answer is generated; that check prepares each input and drops it, so memory
    stays flat over thousands of items (a processor call, cheap beside the model's). Then per item:
    prepare, analyse (at ``layer``) and answer with every token once, and for each run select, answer
    with the kept set from the method's own pruning layer (once per distinct pruning layer and kept
    set) and score the full answer's token ids under it.

    Args:
        session: a :class:`dualview.engine.session.Session`; items: :class:`Item` s; runs: from :func:`plan`;
        layer: analysis layer (None or blank: the model's default); max_new_tokens: answer length;
        limit: the most pruned answers allowed (:data:`MAX_RUNS`); guard: a context manager entered
            around each model call (the app's model lock; re-entered many times); progress:
            ``progress(done_items, items, text)`` after each item; notes: added to the plan's notes.
    Returns:
        :class:`Sweep`.
    Raises:
        DualviewError: no items or runs, too much work, a bad item, budget or layer (one sentence,
        naming the item).
    """
    from dualview.methods import get_method
    from dualview.queries import DEFAULT_QUERY

    check_work(len(items), len(runs), limit)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise DualviewError(f"max_new_tokens must be a whole number of at least 1, got {max_new_tokens!r}.")
    layer = parse_layer(layer, session.num_layers)
    guard = guard if guard is not None else nullcontext()

    def prepared_input(item: Item):
        """The item's prepared input (image decoded, prompt and length checked), or one sentence naming it."""
        try:
            request = validate_request(item.image, item.prompt, 1, layer=layer, num_layers=session.num_layers)
            with guard:
                return session.prepare(request.image, request.prompt)
        except DualviewError as error:
            raise DualviewError(f"Item {item.name!r}: {error}") from None

    budgets = list(dict.fromkeys(run.budget for run in runs))
    for item in items:  # every check before the first answer (inputs are prepared again below, not kept)
        visual = prepared_input(item).num_visual
        try:
            for budget in budgets:
                resolve_budget(budget, visual)
        except DualviewError as error:
            raise DualviewError(f"Item {item.name!r}: {error}") from None
    rows, kept_sets = [], []
    for done, item in enumerate(items, start=1):
        prepared = prepared_input(item)
        with guard:
            analysis = session.analyze(prepared, layer=layer)
            full = session.answer(prepared, max_new_tokens=max_new_tokens)
        ids = session.answer_ids(full)
        full_logprob = full.logprob_of(ids)
        answered: dict = {}
        for run in runs:
            method = get_method(run.method)
            kept = method.select(analysis, run.budget, **run.params).kept
            where = method.prune_layer(analysis)
            key = (where, tuple(sorted(kept.tolist())))
            if key not in answered:
                with guard:
                    pruned = session.answer(prepared, keep=kept, layer=where, max_new_tokens=max_new_tokens)
                    logprob = pruned.logprob_of(ids)  # the same answer: its generation scored it already
                    if logprob is None:
                        logprob = session.answer_logprob(prepared, ids, keep=kept, layer=where)
                answered[key] = (pruned.text, logprob)
            text, logprob = answered[key]
            measures = analysis.measures(kept)
            mass = analysis.debug_measures(kept, run.params.get("query", DEFAULT_QUERY))["kept_mass"]
            judged = item.expected is not None
            rows.append({
                "item": item.name, "prompt": prepared.prompt, "expected": item.expected, "method": run.method,
                "budget": run.budget, "seed": run.seed, "visual_tokens": analysis.num_visual, "kept": int(kept.numel()),
                "prune_layer": where, "full_answer": full.text, "pruned_answer": text,
                "flipped": not same_answer(text, full.text),
                "full_correct": same_answer(full.text, item.expected) if judged else None,
                "correct": same_answer(text, item.expected) if judged else None,
                "full_logprob": round(full_logprob, 6), "pruned_logprob": round(logprob, 6),
                "logprob_drop": round(full_logprob - logprob, 6),
                "weight_error": round(measures["weight_error"], 6), "effective_rank": round(measures["effective_rank"], 6),
                "attention_error": round(measures["attention_error"], 6), "kept_mass": round(mass, 6),
                "kept_digest": _digest(kept.tolist()),
            })
            kept_sets.append(kept.tolist())
        if progress is not None:
            progress(done, len(items), item.name)
    methods = list(dict.fromkeys(run.method for run in runs))
    settings = {"model": session.name, "family": session.family, "analysis_layer": session.check_layer(layer),
                "methods": methods, "budgets": budgets,
                "seeds": sorted({run.seed for run in runs if run.seed is not None}),
                "params": {m: {k: v for k, v in next(r.params for r in runs if r.method == m).items() if k != SEED}
                           for m in methods},
                "max_new_tokens": max_new_tokens, "items": len(items), "runs_per_item": len(runs), "limit": limit,
                "flip_rule": "pruned answer != full answer after whitespace normalisation and case folding"}
    return Sweep(rows, kept_sets, settings, list(notes))
