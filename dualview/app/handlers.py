"""What each event of the page does: module-level functions of a visitor's state and the values
of the page's inputs, returning the views they change.

Every handler returns a dict ``view name -> value`` (names are :data:`dualview.app.layout.VIEWS`);
the page wires them to components and skips the views a handler leaves out. Handlers raise
:class:`~dualview.errors.DualviewError` with one sentence for bad input and never touch a state
they were not handed, so one visitor's error cannot disturb another's views. They can be called
without a browser (the tests do).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np

from dualview import figures
from dualview.app import views
from dualview.app.models import ModelHolder
from dualview.app.state import MAX_NEW_TOKENS, ORACLE_MAX_LENGTH, PRESETS, Answers, AppState
from dualview.answers import same_answer
from dualview.budget import as_scalar, resolve_budget
from dualview.errors import DualviewError
from dualview.methods import all_methods, get_method, method_names
from dualview.validation import MAX_SEARCH_CALLS, parse_layer, validate_choice, validate_request

def _controls() -> tuple:
    """One control per distinct declared parameter: a ``Param`` that several methods share (the
    query rows) is one control feeding all of them. Entries: (method names, Param)."""
    found: dict[int, tuple[list, object]] = {}
    for method in all_methods():
        for param in method.params:
            found.setdefault(id(param), ([], param))[0].append(method.name)
    return tuple((tuple(names), param) for names, param in found.values())


PARAM_CONTROLS = _controls()
"""Every method's parameters, in the order of the page's parameter controls."""
CLICK_MODES = ("inspect", "force keep", "force drop")
"""What a click on a patch (or ``/inspect``) does to the token."""


def params_from_controls(values) -> dict[str, dict]:
    """The controls' values (in :data:`PARAM_CONTROLS` order; None or missing: the default) as
    every method's checked parameters, by method name."""
    values = list(values) + [None] * (len(PARAM_CONTROLS) - len(values))
    given: dict[str, dict] = {m.name: {} for m in all_methods()}
    for (methods, param), value in zip(PARAM_CONTROLS, values):
        if value is not None:
            for method in methods:
                given[method][param.name] = value
    return {name: get_method(name).check_params(chosen) for name, chosen in given.items()}


def require(state: AppState | None) -> AppState:
    if state is None:
        raise DualviewError("Run an analysis first (pick an example or upload an image, then press Run).")
    return state


# --- views -----------------------------------------------------------------------------------


def selection_views(state: AppState) -> dict:
    """The views of a new kept set that the eye follows (status, kept map, the maps of a new query,
    summary, the notes of the tables): sent first; :func:`detail_views` follows in its own step."""
    query_maps = {}
    if state.derived.drawn_query != state.query:  # the maps that follow the query, only when it changed
        query_maps = {"magnitude": views.magnitude_figure(state), "attention_map": views.attention_figure(state)}
        state.derived.drawn_query = state.query
    return {"state": state, "status": views.status_text(state), "kept": views.kept_figure(state), **query_maps,
            "summary": views.summary(state), "command": views.cli_command(state),
            "compare_note": views.compare_note(state), "table_note": views.table_note(state)}


def detail_views(state: AppState | None) -> dict:
    """The other views of a new kept set (teaching panel, token space, per-head errors, debug text,
    PC-MMR animation; classic MMR reset until its tab opens). A step of its own after a
    re-selection: sent with it, they delayed the kept map in Chromium by about 0.15-0.3 s on the
    built-in model. Nothing without a state."""
    if state is None:
        return {}
    return {"debug": views.debug_text(state), "teaching": views.teaching_text(state),
            "space": views.space_figure(state), "per_head": views.per_head_text(state),
            "pcmmr_plot": views.step_figure(state, "pcmmr", 0),
            "pcmmr_step": gr.update(minimum=0, maximum=max(1, views.steps_of(state, "pcmmr") - 1), value=0),
            "classic_plot": None, "classic_step": gr.update(minimum=0, maximum=1, value=0)}


def classic_view(state: AppState | None) -> dict:
    """Classic MMR's first step and its step range: computed only when its view is opened (one
    token per step makes it the costliest selection)."""
    if state is None:
        return {}
    return {"classic_plot": views.step_figure(state, "classic", 0),
            "classic_step": gr.update(minimum=0, maximum=max(1, views.steps_of(state, "classic") - 1), value=0)}


def analysis_views(state: AppState) -> dict:
    """Every view of a new analysis (the curves follow in :func:`curves_step`)."""
    return {**selection_views(state), **detail_views(state), "share_map": views.update_share_figure(state),
            "duplication": views.duplication_figure(state), "row": views.row_figure(state),
            "picker": shown_picker(state), "token": state.selected,
            "budget": gr.update(minimum=1, maximum=state.num_visual, value=state.budget),
            "space_kind": state.space_kind, "answers": views.answers_text(state),
            "curves": None, "method_table": None, "compare": None}


# --- Run and re-selection --------------------------------------------------------------------


def run(holder: ModelHolder, image, prompt, model_name, method, budget, layer, param_values, example=None) -> dict:
    """Validate, prepare once, analyse, select and answer: a new state with every view.

    ``example`` (a shipped example's sidecar: ground truth, evidence) is kept only when ``image`` is
    that example's picture and the prompt its question: it describes exactly those inputs."""
    name = (model_name or "").strip() or "builtin"
    params = params_from_controls(param_values)
    request = validate_request(image, prompt, budget, method=method, layer=layer, params=params.get(method))
    session = holder.get(name)
    layer = parse_layer(request.layer, session.num_layers)
    with holder.lock:
        prepared = session.prepare(request.image, request.prompt)
        analysis = session.analyze(prepared, layer=layer)
    request = dataclasses.replace(request, layer=analysis.layer, budget=resolve_budget(request.budget, analysis.num_visual))
    if example is not None and (request.prompt != example["question"].strip() or not same_image(request.image, example)):
        example = None
    tokenizer = session.adapter.tokenizer
    prompt_tokens = [tokenizer.decode([int(i)]) for i in prepared.input_ids[prepared.text_positions]]
    state = AppState(model_name=name, request=request, analysis=analysis, params=params, example=example,
                     prompt_tokens=prompt_tokens)
    state.reselect()
    answer(holder, state)
    return analysis_views(state)


def update(state: AppState | None, method, budget, param_values, with_oracle: bool = False) -> dict:
    """Re-select after the method, the budget or a parameter changed: no model call; the views the
    eye follows (:func:`selection_views`). The other views (:func:`detail_views`), the answer and
    the curves (current budget marked, :func:`curves_step`) follow in steps of their own."""
    state = require(state)
    params = params_from_controls(param_values)
    method, budget, _ = validate_choice(method, budget, params.get(method), state.num_visual)
    state.params = params
    state.request = dataclasses.replace(state.request, method=method, budget=budget, params=params[method])
    state.reselect()
    return selection_views(state)


def preset_budget(choice: str, state: AppState | None):
    """A paper budget ("35.3 %") as a token count of this analysis (no change without one)."""
    if state is None or not choice:
        return gr.skip()
    return resolve_budget(choice.replace(" ", ""), state.num_visual)


def answer(holder: ModelHolder, state: AppState | None) -> dict:
    """Full answer (once per analysis) and the answer with the current kept set, each with the
    log-probability of the full answer, scored from the full answer's own token ids."""
    state = require(state)
    session = holder.get(state.model_name)
    prepared, layer = state.analysis.prepared, state.prune_layer
    kept = state.kept_tensor()
    with holder.lock:
        if state.derived.full_answer is None:
            full = session.answer(prepared, max_new_tokens=MAX_NEW_TOKENS)
            state.derived.full_answer = (full, full.logprob_of(session.answer_ids(full)))
        full, full_logprob = state.derived.full_answer
        pruned = session.answer(prepared, keep=kept, layer=layer, max_new_tokens=MAX_NEW_TOKENS)
        ids = session.answer_ids(full)
        pruned_logprob = pruned.logprob_of(ids)  # the same answer: its generation scored it already
        if pruned_logprob is None:
            pruned_logprob = session.answer_logprob(prepared, ids, keep=kept, layer=layer)
    state.derived.answers = Answers(full.text, pruned.text, full.prefill_seconds, pruned.prefill_seconds,
                                    full_logprob, pruned_logprob, pruned.prompt_tokens, pruned.kept_tokens)
    state.derived.answers_for = (tuple(sorted(kept.tolist())), layer)
    return {"state": state, "answers": views.answers_text(state), "summary": views.summary(state)}


def restore(holder: ModelHolder, state: AppState | None, max_calls) -> dict:
    """What brings the full answer back: add-back search from the current kept set (method.md §8.4)."""
    from dualview.engine.attribution import restore_answer

    state = require(state)
    if isinstance(max_calls, bool) or not isinstance(max_calls, (int, float)) or max_calls != int(max_calls) \
            or not 1 <= max_calls <= MAX_SEARCH_CALLS:
        raise DualviewError(f"The search may spend 1 to {MAX_SEARCH_CALLS} forward passes, not {max_calls!r}.")
    if state.derived.full_answer is None:
        answer(holder, state)
    session = holder.get(state.model_name)
    with holder.lock:
        found = restore_answer(session, state.analysis.prepared, state.kept_tensor(), state.derived.full_answer[0],
                               state.prune_layer, max_calls=int(max_calls))
    state.derived.restoration = (tuple(state.kept()), state.prune_layer, found)
    return {"state": state, "restore_text": views.restore_text(state), "restore_map": views.restore_figure(state),
            "first_order_map": views.first_order_figure(state), "restore_curve": views.restore_curve_figure(state)}


def answer_every_method(holder: ModelHolder, state: AppState | None) -> dict:
    """A table row per method at the current budget: kept count, answer, agreement, weight error, prefill."""
    state = require(state)
    session = holder.get(state.model_name)
    full = state.derived.full_answer[0].text if state.derived.full_answer else None
    rows = []
    for name in method_names():
        if name == "oracle" and state.analysis.prepared.length > ORACLE_MAX_LENGTH:
            continue
        method = get_method(name)
        selection = state.select(method)
        with holder.lock:
            result = session.answer(state.analysis.prepared, keep=selection.kept, layer=method.prune_layer(state.analysis),
                                    max_new_tokens=MAX_NEW_TOKENS)
        agree = "" if full is None else ("yes" if same_answer(result.text, full) else "no")
        rows.append([name, int(selection.kept.numel()), result.text, agree,
                     round(state.analysis.weight_error(selection.kept), 4), round(result.prefill_seconds, 4)])
    state.derived.method_answers = rows
    state.derived.method_answers_for = state.choice_key()
    return {"state": state, "method_table": rows, "table_note": views.table_note(state)}


# --- curves, token space, comparison ---------------------------------------------------------


def curves(state: AppState | None, with_oracle: bool) -> dict:
    return {"curves": views.curves_figure(require(state), bool(with_oracle))}


def curves_step(state: AppState | None, with_oracle: bool) -> dict:
    """The curves after a Run or a re-selection, in a step of their own after the answer: computed
    when stale, else only redrawn with the current budget marked. (Sent with the re-selection, the
    curves' redraw delayed the kept map by 0.3-0.5 s in Chromium once their tab had been opened.)
    Nothing without a state."""
    return {} if state is None else curves(state, with_oracle)


def curve_data(state: AppState | None, with_oracle: bool) -> dict:
    state = require(state)
    return {"curve_data": {"budgets": state.curve_budgets(), "methods": state.curves(bool(with_oracle))}}


def token_space(state: AppState | None, kind: str) -> dict:
    state = require(state)
    if kind not in ("keys", "values"):
        raise DualviewError(f"The token space projects 'keys' or 'values', not {kind!r}.")
    state.space_kind = kind
    return {"space": views.space_figure(state)}


def compare(state: AppState | None, chosen) -> dict:
    state = require(state)
    if not chosen:
        raise DualviewError("Tick at least one method to compare.")
    if isinstance(chosen, str) or len(set(chosen)) != len(chosen):
        raise DualviewError(f"Name each method to compare once, as a list: {chosen!r}.")
    kept = {m: state.select(m).kept.tolist() for m in chosen}
    errors = {m: state.analysis.weight_error(k) for m, k in kept.items()}
    state.derived.compared_for = state.choice_key()
    return {"compare_note": views.compare_note(state), "compare": figures.compare_kept(state.layout, kept, image=state.display_image, errors=errors,
                                            title=f"Kept masks at {state.budget} of {state.num_visual} tokens")}


# --- inputs only Run applies ----------------------------------------------------------------


def input_changed(state: AppState | None, which: str, value=None) -> dict:
    """A Run input changed on the page (``which`` in :data:`views.RUN_INPUTS`; ``value``: the new
    prompt, model or layer; a new image is always a change): every view is marked stale, or unmarked
    when the input is back to the analysed one. Nothing without an analysis."""
    if state is None:
        return {}
    if which == "prompt":
        changed = (value or "").strip() != state.request.prompt
    elif which == "model":
        changed = ((value or "").strip() or "builtin") != state.model_name
    elif which == "layer":
        from dualview.engine.session import default_layer

        try:
            layer = parse_layer(value, state.analysis.num_layers)
        except DualviewError:
            layer = -1  # not a layer: whatever Run will say, not this analysis
        changed = (default_layer(state.analysis.num_layers) if layer is None else layer) != state.analysis.layer
    else:
        changed = True
    state.mark_changed(which, changed)
    return {"state": state, "status": views.status_text(state), "answers": views.answers_text(state),
            "compare_note": views.compare_note(state), "table_note": views.table_note(state)}


# --- patches ---------------------------------------------------------------------------------


def inspect(state: AppState | None, token, mode: str) -> dict:
    """Select a token; in force modes toggle it in the forced keep / drop set."""
    state = require(state)
    if mode not in CLICK_MODES:
        raise DualviewError(f"A click's mode is {', '.join(repr(m) for m in CLICK_MODES[:-1])} or "
                            f"{CLICK_MODES[-1]!r}, not {mode!r}.")
    token = as_scalar(token)
    if isinstance(token, bool) or not isinstance(token, (int, float)) or not float(token).is_integer() \
            or not 0 <= int(token) < state.num_visual:
        raise DualviewError(f"Token {token!r} does not exist: this image has tokens 0 to {state.num_visual - 1}.")
    state.selected = int(token)
    state.toggle_forced(state.selected, mode)
    return {"state": state, "token": state.selected, "row": views.row_figure(state), "teaching": views.teaching_text(state),
            "kept": views.kept_figure(state), "magnitude": views.magnitude_figure(state),
            "duplication": views.duplication_figure(state), "status": views.status_text(state),
            "summary": views.summary(state), "space": views.space_figure(state), "per_head": views.per_head_text(state),
            "answers": views.answers_text(state)}


def pick(state: AppState | None, x: float, y: float, mode: str) -> dict:
    """A click at pixel (x, y) of the picker image: :func:`inspect` of the token there. The picker's
    own picture is not redrawn here (a new picture loading under the pointer swallows the next
    clicks): :func:`refresh_picker` redraws it once the clicks pause."""
    state = require(state)
    hit = state.token_at_display(float(x), float(y))
    if hit is None:
        raise DualviewError("That point is outside every visual token's patch (e.g. a centre-cropped border).")
    state.derived.last_click = time.monotonic()
    return inspect(state, hit, mode)


PICKER_PAUSE_S = 1.2
"""The picker's marks are redrawn once no patch was picked for this long (see :func:`pick`)."""


def shown_picker(state: AppState):
    """The picker's picture with the current marks, recorded as shown."""
    state.derived.picker_shown = state.picker_key()
    return state.picker_image


def refresh_picker(state: AppState | None) -> dict:
    """Called by the picker's timer, which a click switches on: nothing while clicks go on (less than
    ``PICKER_PAUSE_S`` since the last), then the picture with its marks (when they are out of date)
    and the timer switched off, so an idle page sends no requests."""
    if state is not None and time.monotonic() - state.derived.last_click < PICKER_PAUSE_S:
        return {}
    stop = {"picker_timer": gr.Timer(active=False)}
    if state is None or state.derived.picker_shown == state.picker_key():
        return stop
    return {"picker": shown_picker(state), **stop}


def clear_forced(state: AppState | None) -> dict:
    state = require(state)
    state.forced_keep.clear()
    state.forced_drop.clear()
    return {"state": state, "kept": views.kept_figure(state), "status": views.status_text(state),
            "picker": shown_picker(state), "summary": views.summary(state), "answers": views.answers_text(state)}


# --- animations ------------------------------------------------------------------------------


def step(state: AppState | None, which: str, value) -> dict:
    """The ``"pcmmr"`` or ``"classic"`` animation shown at step ``value`` (0-based), for API clients
    (the page steps and plays the animation in the browser, from the figure a selection sent)."""
    state = require(state)
    last = views.steps_of(state, which) - 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 0 <= value <= last:
        raise DualviewError(f"Step {value!r} does not exist: this selection has steps 0 to {last}.")
    return {f"{which}_plot": views.step_figure(state, which, int(value))}


# --- export and examples ---------------------------------------------------------------------


EXPORT_PREFIX = "dualview-export-"
EXPORT_MAX_AGE_S = 3600
"""Export folders older than this are deleted at the next export (gradio has copied the files
it serves into its own cache, which ``build_demo`` prunes on the same schedule)."""
UPLOAD_NAME = "image.png"
"""The file name an upload is exported under, beside the JSON: the exported command names it so, to
run in the folder the visitor saves the files to."""


def prune_exports(root: Path | None = None, now: float | None = None) -> int:
    """Delete the export folders in ``root`` (the temp folder) older than :data:`EXPORT_MAX_AGE_S`;
    how many were deleted."""
    root, now, gone = Path(root or tempfile.gettempdir()), time.time() if now is None else now, 0
    for folder in root.glob(EXPORT_PREFIX + "*"):
        try:
            old = now - folder.stat().st_mtime > EXPORT_MAX_AGE_S
        except OSError:  # deleted meanwhile by another export
            continue
        if old and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            gone += 1
    return gone


def export(state: AppState | None) -> dict:
    """The JSON of everything shown and the PC-MMR animation as one HTML file (plus, for an upload,
    the picture as :data:`UPLOAD_NAME`), in a new temp folder; older exports are pruned first."""
    state = require(state)
    prune_exports()
    folder = Path(tempfile.mkdtemp(prefix=EXPORT_PREFIX))
    image = None
    if not state.example:  # an upload: saved beside the JSON, so the exported command can run
        image = UPLOAD_NAME
        state.request.image.save(folder / image)
    data = folder / "dualview.json"
    data.write_text(json.dumps(views.export_payload(state, image), indent=1, allow_nan=False))
    html = folder / "pcmmr-animation.html"
    html.write_text(figures.animation_html(views.step_figure(state, "pcmmr"), title="dualview: PC-MMR step by step"))
    files = [str(data), str(html)] + ([str(folder / image)] if image else [])
    return {"files": files, "command": views.cli_command(state, image)}


def example_by_name(examples: list[dict], name: str) -> dict:
    for example in examples:
        if example["name"] == name:
            return {"image": example["path"], "prompt": example["question"], "example": example}
    raise DualviewError(f"No example named {name!r}; known: {', '.join(e['name'] for e in examples)}.")


def same_image(image, example: dict) -> bool:
    """Whether ``image`` is the example's picture (so its ground truth and evidence apply)."""
    from PIL import Image

    with Image.open(example["path"]) as shipped:
        return shipped.size == image.size and np.array_equal(np.asarray(shipped.convert("RGB")), np.asarray(image))


def preset_labels() -> list[str]:
    return [f"{100 * p:.1f} %" for p in PRESETS]


# --- sweep -----------------------------------------------------------------------------------


def sweep(holder: ModelHolder, examples: list[dict], model_name, layer, methods, budgets, seeds, param_values,
          progress=None) -> dict:
    """Sweep the example scenes with the chosen methods, budgets and seeds (:mod:`dualview.sweep`):
    at most :data:`dualview.sweep.MAX_APP_RUNS` pruned answers, never the methods of
    :data:`dualview.sweep.APP_EXCLUDED`, every check before the model is asked for; the parameter
    controls' values apply (the seeds replace random's); ``progress(fraction_or_pair, desc=...)``
    (a ``gr.Progress``) hears of each example. Returns the status line, the flip table, the items
    that flip and the CSV / JSON files (in a new temp folder). Touches no visitor's state."""
    from dualview import sweep as sweeping

    methods = sweeping.parse_list(methods, "methods")
    excluded = [name for name in methods if name in sweeping.APP_EXCLUDED]
    if excluded:
        raise DualviewError(f"The app's sweep does not run {', '.join(excluded)} (its cost grows with the square of "
                            "the sequence); use python -m dualview sweep.")
    params = params_from_controls(param_values)
    chosen = {name: {k: v for k, v in params[name].items() if k != sweeping.SEED} for name in methods if name in params}
    runs, notes = sweeping.plan(methods, budgets, seeds, chosen)
    items = sweeping.items_from_examples(examples)
    sweeping.check_work(len(items), len(runs), sweeping.MAX_APP_RUNS)
    session = holder.get((model_name or "").strip() or "builtin")
    report = None if progress is None else (lambda done, total, name: progress((done, total), desc=f"swept {name}"))
    result = sweeping.run_sweep(session, items, runs, layer=layer, max_new_tokens=MAX_NEW_TOKENS,
                                limit=sweeping.MAX_APP_RUNS, guard=holder.lock, progress=report, notes=notes)
    files = result.write(tempfile.mkdtemp(prefix="dualview-sweep-"))
    headers, rows = result.summary_cells()
    item_headers, item_rows = result.item_cells()
    accuracy = result.full_accuracy()
    text = (f"{len(items)} examples × {len(runs)} runs = {len(result.rows)} pruned answers on `{session.name}`"
            + ("" if accuracy is None else f"; the full answers are right on {100 * accuracy:.1f} % of the examples")
            + ". " + " ".join(notes))
    return {"sweep_text": text, "sweep_table": {"headers": headers, "data": rows},
            "sweep_items": {"headers": item_headers, "data": item_rows}, "sweep_files": files}
