"""The Gradio page: wires the components of :mod:`dualview.app.layout` to the handlers of
:mod:`dualview.app.handlers`; nothing is computed or drawn here.

Every event that a client may call is named (``api_name``), so ``gradio_client`` drives the same
code paths as the browser: ``/run`` and ``/update`` return the views of
:data:`dualview.app.layout.VIEWS` (in that order; views an event leaves unchanged are skipped),
``/answer``, ``/reanswer``, ``/inspect``, ``/clear_forced``, ``/pcmmr_step``, ``/classic_step``,
``/curves``, ``/curve_data``, ``/token_space``, ``/answer_all``, ``/compare``, ``/export``,
``/example``. Per-visitor results live in ``gr.State``; the model is shared through one
:class:`~dualview.app.models.ModelHolder`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from dualview.app import handlers
from dualview.app.examples import load_examples
from dualview.app.layout import CSS, VIEWS, build_layout
from dualview.app.models import ModelHolder
from dualview.errors import DualviewError
from dualview.figures import STEP_JS
from dualview.methods import method_names

__all__ = ["build_demo", "CSS", "VIEWS"]

ANSWER_VIEWS = ("state", "answers", "summary")
INSPECT_VIEWS = ("state", "token", "row", "teaching", "kept", "magnitude", "duplication", "status", "summary", "space",
                 "per_head")


def user_errors(function):
    """Show a DualviewError (or any unexpected failure) as one sentence, never a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except gr.Error:
            raise
        except DualviewError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:  # noqa: BLE001 - the page must stay usable
            raise gr.Error(f"Something went wrong ({type(error).__name__}: {str(error)[:200]}).",
                           print_exception=False) from None

    return wrapper


def build_demo(holder: ModelHolder, default_model: str = "builtin", examples_dir: str | Path | None = None,
               models=None, allow_any_model: bool = False) -> gr.Blocks:
    """The whole app; ``default_model`` is loaded on the first Run (or before launch by the caller);
    ``models``: the names the model box offers (typing others only with ``allow_any_model``)."""
    examples = load_examples(examples_dir) if examples_dir else load_examples()
    with gr.Blocks(title="dualview", analytics_enabled=False) as demo:  # no usage reports leave the machine
        c = build_layout(examples, method_names(), default_model, list(models or [default_model]), allow_any_model)
        params = c["params"]

        def wrap(handler, outputs: tuple[str, ...]):
            """``handler(*input values) -> {view: value}`` as a Gradio function of the ``outputs``
            views (those the handler leaves out are skipped), errors shown as one sentence."""

            @user_errors
            def call(*values):
                result = handler(*values)
                chosen = [result.get(name, gr.skip()) for name in outputs]
                return chosen[0] if len(chosen) == 1 else chosen

            return call

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
        curves_step = then(handlers.curves_if_stale, [c["state"], c["with_oracle"]], ("curves",),
                           show_progress="minimal")

        def answer_step(api_name=False):
            return then(lambda state: handlers.answer(holder, state), [c["state"]], ANSWER_VIEWS, api_name=api_name)

        run_inputs = [c["image"], c["prompt"], c["model"], c["method"], c["budget"], c["layer"], *params, c["example"]]

        def run(image, prompt, model, method, budget, layer, *rest):
            *param_values, example = rest
            return handlers.run(holder, image, prompt, model, method, budget, layer, param_values, example)

        update_inputs = [c["method"], c["budget"], c["with_oracle"], *params, c["state"]]

        def update(method, budget, with_oracle, *rest):
            *param_values, state = rest
            return handlers.update(state, method, budget, param_values, with_oracle)

        # -- Run, and every re-selection: one chain each, written once ------------------------------
        chain(event(c["run"].click, run, run_inputs, VIEWS, api_name="run", concurrency_limit=2), [curves_step])
        reselect = [answer_step(), curves_step]
        chain(event(c["budget"].release, update, update_inputs, VIEWS, api_name="update", show_progress="hidden"),
              [answer_step("answer"), curves_step])
        for trigger in [c["method"].input] + [control.release if isinstance(control, gr.Slider) else control.submit
                                              for control in params]:
            chain(event(trigger, update, update_inputs, VIEWS, show_progress="hidden"), reselect)
        preset = c["preset"].input(user_errors(lambda choice, state: handlers.preset_budget(choice, state)),
                                   [c["preset"], c["state"]], [c["budget"]], api_name=False)
        chain(preset, [then(update, update_inputs, VIEWS, show_progress="hidden"), *reselect])
        event(c["reanswer"].click, lambda state: handlers.answer(holder, state), [c["state"]], ANSWER_VIEWS,
              api_name="reanswer")

        # -- patches -------------------------------------------------------------------------------
        event(c["token"].submit, lambda token, mode, state: handlers.inspect(state, token, mode),
              [c["token"], c["click_mode"], c["state"]], INSPECT_VIEWS, api_name="inspect")

        @user_errors
        def pick(mode, state, evt: gr.SelectData):
            result = handlers.pick(state, *evt.index, mode)
            return [result.get(name, gr.skip()) for name in INSPECT_VIEWS]

        c["picker"].select(pick, [c["click_mode"], c["state"]], [c[n] for n in INSPECT_VIEWS], api_name=False)
        event(c["clear_forced"].click, handlers.clear_forced, [c["state"]], ("state", "kept", "status", "summary"),
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
              ("state", "method_table"), api_name="answer_all")
        event(c["compare_button"].click, lambda chosen, state: handlers.compare(state, chosen),
              [c["compare_methods"], c["state"]], ("compare",), api_name="compare")
        event(c["export_button"].click, handlers.export, [c["state"]], ("files", "command"), api_name="export")

        # -- examples -------------------------------------------------------------------------------
        example_views = ("image", "prompt", "example")

        @user_errors
        def choose(evt: gr.SelectData):
            chosen = examples[evt.index]
            return chosen["path"], chosen["question"], chosen

        chain(c["gallery"].select(choose, None, [c[n] for n in example_views], api_name=False),
              [then(run, run_inputs, VIEWS), curves_step])
        event(c["example_name"].submit, lambda name: handlers.example_by_name(examples, name), [c["example_name"]],
              example_views, api_name="example")
        c["image"].upload(lambda: None, None, [c["example"]], api_name=False)

        if examples:
            chain(event(demo.load, run, run_inputs, VIEWS), [curves_step])
    demo.model_holder = holder  # the shared models, for the launcher and the tests
    return demo
