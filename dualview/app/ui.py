"""The Gradio page: wires the components of :mod:`dualview.app.layout` to the handlers of
:mod:`dualview.app.handlers`; nothing is computed or drawn here.

Every event that a client may call is named (``api_name``), so ``gradio_client`` drives the same
code paths as the browser: ``/run`` and ``/update`` return the views of
:data:`dualview.app.layout.VIEWS` (in that order; views an event leaves unchanged are skipped;
after ``/update``, ``/details`` gives the teaching panel, token space, per-head errors, debug text
and animation of the new kept set), ``/answer``, ``/reanswer``, ``/inspect``, ``/clear_forced``, ``/pcmmr_step``, ``/classic_step``,
``/curves``, ``/curve_data``, ``/token_space``, ``/answer_all``, ``/compare``, ``/export``,
``/example``, ``/sweep``. Per-visitor results live in ``gr.State``; the model is shared through one
:class:`~dualview.app.models.ModelHolder`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from dualview.app import handlers, views
from dualview.app.examples import load_examples
from dualview.app.layout import CSS, VIEWS, build_layout
from dualview.app.models import ModelHolder
from dualview.app.state import AppState
from dualview.errors import DualviewError
from dualview.figures import STEP_JS
from dualview.methods import method_names

__all__ = ["build_demo", "CSS", "VIEWS"]

ANSWER_VIEWS = ("state", "answers", "summary")
DETAIL_VIEWS = ("debug", "teaching", "space", "per_head", "pcmmr_plot", "pcmmr_step", "classic_plot", "classic_step")
INSPECT_VIEWS = ("state", "token", "row", "teaching", "kept", "magnitude", "duplication", "status", "summary", "space",
                 "per_head", "answers")


def sentence_of(error: Exception) -> str:
    """The one sentence a visitor sees for ``error`` (a DualviewError's own, else a short summary)."""
    if isinstance(error, (DualviewError, gr.Error)):
        return str(error.message if isinstance(error, gr.Error) else error)
    return f"Something went wrong ({type(error).__name__}: {str(error)[:200]})."


def from_the_page() -> bool:
    """Whether the running event came from the page in a browser (not from an API client such as
    ``gradio_client``, which marks its calls ``x-gradio-user: api``)."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    headers = getattr(request, "headers", None) or {}
    return headers.get("x-gradio-user") != "api" and "mozilla" in headers.get("user-agent", "").lower()


def user_errors(function, outputs: tuple[str, ...] = ()):
    """Show a DualviewError (or any unexpected failure) as one sentence, never a traceback.

    API clients get it as the call's error. On the page an error must not touch the views (gradio
    would put every output in its red error state, the budget slider included, and leave it there):
    a toast says the sentence, the status (when among ``outputs``) says it above the previous
    analysis's status, the budget control (when among them) goes back to the budget the views show,
    and every other output is skipped, so the views and the state stay as they were.
    ``outputs``: the view names ``function``'s result fills, in order."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the page must stay usable
            sentence = sentence_of(error)
            if not outputs or not from_the_page():
                raise gr.Error(sentence, print_exception=False) from None
            gr.Warning(sentence)
            state = next((a for a in args if isinstance(a, AppState)), None)
            shown = {"status": views.error_status(sentence, state)}
            if state is not None:
                shown["budget"] = state.budget
            chosen = [shown.get(name, gr.skip()) for name in outputs]
            return chosen[0] if len(chosen) == 1 else chosen

    return wrapper


def build_demo(holder: ModelHolder, default_model: str = "builtin", examples_dir: str | Path | None = None,
               models=None, allow_any_model: bool = False) -> gr.Blocks:
    """The whole app; ``default_model`` is loaded on the first Run (or before launch by the caller);
    ``models``: the names the model box offers (typing others only with ``allow_any_model``)."""
    examples = load_examples(examples_dir) if examples_dir else load_examples()
    # no usage reports leave the machine; files served (exports, sweeps) are deleted after an hour
    with gr.Blocks(title="dualview", analytics_enabled=False,
                   delete_cache=(handlers.EXPORT_MAX_AGE_S, handlers.EXPORT_MAX_AGE_S)) as demo:
        c = build_layout(examples, method_names(), default_model, list(models or [default_model]), allow_any_model)
        params = c["params"]

        def wrap(handler, outputs: tuple[str, ...]):
            """``handler(*input values) -> {view: value}`` as a Gradio function of the ``outputs``
            views (those the handler leaves out are skipped), errors shown as one sentence."""

            def call(*values):
                result = handler(*values)
                chosen = [result.get(name, gr.skip()) for name in outputs]
                return chosen[0] if len(chosen) == 1 else chosen

            return user_errors(call, outputs)

        def event(trigger, handler, inputs: list, outputs: tuple[str, ...], **kwargs):
            kwargs.setdefault("api_name", False)
            return trigger(wrap(handler, outputs), inputs, [c[name] for name in outputs], **kwargs)

        def then(handler, inputs: list, outputs: tuple[str, ...], **kwargs) -> dict:
            kwargs.setdefault("api_name", False)
            return dict(fn=wrap(handler, outputs), inputs=inputs, outputs=[c[name] for name in outputs], **kwargs)

        def chain(dependency, steps: list[dict]):
            for step in steps:
                dependency = dependency.then(**step)
            return dependency

        # -- the steps every chain is made of ------------------------------------------------------
        curves_step = then(handlers.curves_step, [c["state"], c["with_oracle"]], ("curves",),
                           show_progress="minimal")

        def answer_step(api_name=False):
            return then(lambda state: handlers.answer(holder, state), [c["state"]], ANSWER_VIEWS, api_name=api_name)

        # the state goes in only so that an error can repeat the previous analysis's status
        run_inputs = [c["image"], c["prompt"], c["model"], c["method"], c["budget"], c["layer"], *params, c["example"],
                      c["state"]]

        def run(image, prompt, model, method, budget, layer, *rest):
            *param_values, example, _previous = rest
            return handlers.run(holder, image, prompt, model, method, budget, layer, param_values, example)

        update_inputs = [c["method"], c["budget"], c["with_oracle"], *params, c["state"]]

        def update(method, budget, with_oracle, *rest):
            *param_values, state = rest
            return handlers.update(state, method, budget, param_values, with_oracle)

        # -- Run, and every re-selection: one chain each, written once ------------------------------
        # a Run pressed while one is running is not dropped (gradio's default for clicks): it runs next
        chain(event(c["run"].click, run, run_inputs, VIEWS, api_name="run", concurrency_limit=2,
                    trigger_mode="always_last"), [curves_step])
        def details_step(api_name=False):
            return then(handlers.detail_views, [c["state"]], DETAIL_VIEWS, show_progress="hidden", api_name=api_name)

        # after a re-selection: the answer, then the other views, then the curves. The answer comes
        # before the detail views because it matters more, and because drawing those views (1.4 MB
        # at 7 209 tokens) right after the kept map held up the kept map's own drawing in Chromium
        # (a budget move took 0.7 s or 1.9 s depending on which the page drew first)
        def reselect(api: bool = False) -> list[dict]:  # the steps after a re-selection (named for API clients)
            return [answer_step("answer" if api else False), details_step("details" if api else False), curves_step]
        # a slider's `input` is every committed move: dragged, typed in its box, arrow keys (gradio's
        # `release` misses the keys and reports a typed value before clamping it); only the latest waits
        chain(event(c["budget"].input, update, update_inputs, VIEWS, api_name="update", show_progress="hidden",
                    trigger_mode="always_last"), reselect(api=True))
        for trigger in [c["method"].input] + [control.input if isinstance(control, gr.Slider) else control.submit
                                              for control in params]:
            chain(event(trigger, update, update_inputs, VIEWS, show_progress="hidden", trigger_mode="always_last"),
                  reselect())
        preset = c["preset"].input(user_errors(lambda choice, state: handlers.preset_budget(choice, state), ("budget",)),
                                   [c["preset"], c["state"]], [c["budget"]], api_name=False)
        chain(preset, [then(update, update_inputs, VIEWS, show_progress="hidden"), *reselect()])
        event(c["reanswer"].click, lambda state: handlers.answer(holder, state), [c["state"]], ANSWER_VIEWS,
              api_name="reanswer")

        # -- patches -------------------------------------------------------------------------------
        event(c["token"].submit, lambda token, mode, state: handlers.inspect(state, token, mode),
              [c["token"], c["click_mode"], c["state"]], INSPECT_VIEWS, api_name="inspect")

        def pick(mode, state, evt: gr.SelectData):
            result = handlers.pick(state, *evt.index, mode)
            return [result.get(name, gr.skip()) for name in INSPECT_VIEWS]

        # every click counts (the default drops clicks made while one is processed): queued, in order
        c["picker"].select(user_errors(pick, INSPECT_VIEWS), [c["click_mode"], c["state"]], [c[n] for n in INSPECT_VIEWS],
                           api_name=False, trigger_mode="multiple", show_progress="hidden"
                           ).then(lambda: gr.Timer(active=True), None, [c["picker_timer"]], api_name=False)
        event(c["picker_timer"].tick, handlers.refresh_picker, [c["state"]], ("picker", "picker_timer"),
              show_progress="hidden")
        event(c["clear_forced"].click, handlers.clear_forced, [c["state"]], ("state", "kept", "status", "picker", "summary", "answers"),
              api_name="clear_forced")

        # -- animations: a selection sends its animation once (every step in the figure); the step
        #    slider and the Play timer show steps in the browser (figures.STEP_JS), no server call;
        #    Play / Pause only switch the timer; /pcmmr_step and /classic_step give API clients a step
        for which in ("pcmmr", "classic"):
            plot, slider, timer = f"{which}_plot", f"{which}_step", f"{which}_timer"
            div = f"document.querySelector('#{c[plot].elem_id} .js-plotly-plot')"
            c[slider].change(None, [c[slider]], None, js=f"(k) => {{ ({STEP_JS})({div}, k); }}")
            c[timer].tick(None, [c[slider]], [c[slider]],
                          js=f"(k) => {{ const a = ({div} || {{}}).layout?.meta?.dv_anim; "
                             "return a ? (Math.round(k || 0) + 1) % a.steps.length : k; }")
            event(c[f"{which}_api"].click, functools.partial(lambda w, value, state: handlers.step(state, w, value), which),
                  [c[slider], c["state"]], (plot,), api_name=f"{which}_step")
            c[f"{which}_play"].click(lambda: gr.Timer(active=True), None, [c[timer]], api_name=False)
            c[f"{which}_pause"].click(lambda: gr.Timer(active=False), None, [c[timer]], api_name=False)
        event(c["classic_tab"].select, handlers.classic_view, [c["state"]], ("classic_plot", "classic_step"),
              api_name="classic_view")

        # -- curves, token space, tables, comparison, export ----------------------------------------
        event(c["with_oracle"].change, handlers.curves, [c["state"], c["with_oracle"]], ("curves",), api_name="curves")
        event(c["with_oracle"].change, handlers.curve_data, [c["state"], c["with_oracle"]], ("curve_data",),
              api_name="curve_data")
        event(c["space_kind"].change, handlers.token_space, [c["state"], c["space_kind"]], ("space",),
              api_name="token_space")
        event(c["restore_button"].click, lambda calls, state: handlers.restore(holder, state, calls),
              [c["restore_calls"], c["state"]], ("state", "restore_text", "restore_map", "first_order_map", "restore_curve"),
              api_name="restore")
        event(c["answer_all"].click, lambda state: handlers.answer_every_method(holder, state), [c["state"]],
              ("state", "method_table", "table_note"), api_name="answer_all")
        event(c["compare_button"].click, lambda chosen, state: handlers.compare(state, chosen),
              [c["compare_methods"], c["state"]], ("compare", "compare_note"), api_name="compare")
        event(c["export_button"].click, handlers.export, [c["state"]], ("files", "command"), api_name="export")

        # -- sweep of the examples: one at a time on the server, bounded by dualview.sweep.MAX_APP_RUNS --
        sweep_views = ("sweep_text", "sweep_table", "sweep_items", "sweep_files")

        def sweep(progress=gr.Progress(), *values):
            model, layer, methods, budgets, seeds, *param_values = values
            result = handlers.sweep(holder, examples, model, layer, methods, budgets, seeds, param_values, progress)
            return [result.get(name, gr.skip()) for name in sweep_views]

        sweep = user_errors(sweep, sweep_views)  # an error on the page leaves the last sweep's results

        c["sweep_button"].click(sweep, [c["model"], c["layer"], c["sweep_methods"], c["sweep_budgets"], c["sweep_seeds"],
                                        *params], [c[name] for name in sweep_views], api_name="sweep", concurrency_limit=1)

        # -- examples -------------------------------------------------------------------------------
        example_views = ("image", "prompt", "example")

        def choose(evt: gr.SelectData):
            chosen = examples[evt.index]
            return chosen["path"], chosen["question"], chosen

        chain(c["gallery"].select(user_errors(choose, example_views), None, [c[n] for n in example_views], api_name=False),
              [then(run, run_inputs, VIEWS), curves_step])
        event(c["example_name"].submit, lambda name: handlers.example_by_name(examples, name), [c["example_name"]],
              example_views, api_name="example")
        c["image"].upload(lambda: None, None, [c["example"]], api_name=False)

        # -- inputs only Run applies: a change marks every view stale until Run ----------------------
        changed_views = ("state", "status", "answers", "compare_note", "table_note")
        for trigger in (c["image"].upload, c["image"].clear):
            event(trigger, lambda state: handlers.input_changed(state, "image"), [c["state"]], changed_views,
                  show_progress="hidden")
        for name in ("prompt", "model", "layer"):  # on any change (typed, pasted, set): compared with the analysed one
            event(c[name].change, functools.partial(lambda which, value, state: handlers.input_changed(state, which, value),
                                                   name), [c[name], c["state"]], changed_views,
                  show_progress="hidden", trigger_mode="always_last")

        if examples:
            chain(event(demo.load, run, run_inputs, VIEWS), [curves_step])
    demo.model_holder = holder  # the shared models, for the launcher and the tests
    return demo
