"""The page's components and their arrangement; no behaviour (that is :mod:`dualview.app.ui`).

:func:`build_layout` must be called inside a ``gr.Blocks`` context; it returns every component
by name. The names of the views handlers fill are :data:`VIEWS`; the parameter controls are
built from the method registry, one per :data:`dualview.app.handlers.PARAM_CONTROLS` entry.
"""

from __future__ import annotations

import base64

import gradio as gr

from dualview.app.handlers import CLICK_MODES, PARAM_CONTROLS, preset_labels
from dualview.figures.picker import LEGEND as PICKER_LEGEND

LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
CSS = """
#status {min-height: 2.5em}
#answers {min-height: 330px}
.teach {font-size: 0.95em}
"""
PLAY_INTERVAL_S = 0.9
PICKER_REFRESH_S = 0.5
"""How often the page asks whether the picker's marks need redrawing (handlers.refresh_picker)."""
STEP_LABEL = "step (0-based): step s shows round s + 1 of the title"
"""The animation sliders' label (issue 16 item 7): the slider counts from 0, the frame titles from 1."""
VIEWS = ("state", "status", "magnitude", "duplication", "kept", "row", "teaching", "picker", "token",
         "pcmmr_plot", "pcmmr_step", "classic_plot", "classic_step", "budget", "command", "summary", "space_kind",
         "answers", "curves", "space", "method_table", "per_head", "debug", "attention_map", "share_map",
         "compare", "compare_note", "table_note")
"""The views a Run fills, in the order of ``/run``'s outputs (``state`` is not sent to API clients)."""


class ImageUpload(gr.Image):
    """``gr.Image`` whose handler gets the upload undecoded (its file path, or the bytes of a data
    URL), so :func:`dualview.images.load_image` alone decodes it: bomb check before decoding,
    16-bit rescaling, one sentence for files that are not images. Same front end as gr.Image."""

    is_template = True  # gradio: draw it with gr.Image's front end

    def preprocess(self, payload) -> str | bytes | None:
        if payload is None:
            return None
        if payload.path is None and payload.url and payload.url.startswith("data:"):
            return base64.b64decode(payload.url.partition(",")[2])
        return payload.path


# Components whose value reaches the handler as sent: the validator (or the handler) gives its one
# sentence for a value outside the choices or the range, the same one the CLI gives, and nothing is
# rounded first (gradio's own checks would answer API clients in other words and round 1.5 to 2).
# Each draws with its parent's front end (``is_template``); gradio wants each class in source.


class RangeSlider(gr.Slider):
    """``gr.Slider``, unchecked: its range (the visual tokens of the loaded model and image, the
    rounds of a selection) is known only after a Run and differs per visitor, or it is a method
    parameter the validator checks."""

    is_template = True

    def preprocess(self, payload):
        return payload


class Choice(gr.Dropdown):
    """``gr.Dropdown``, unchecked: a method or model name the validator / model holder checks."""

    is_template = True

    def preprocess(self, payload):
        return payload


class ChoiceRadio(gr.Radio):
    """``gr.Radio``, unchecked: a choice the handler checks."""

    is_template = True

    def preprocess(self, payload):
        return payload


class Choices(gr.CheckboxGroup):
    """``gr.CheckboxGroup``, unchecked: method names the handler checks."""

    is_template = True

    def preprocess(self, payload):
        return payload


class Number(gr.Number):
    """``gr.Number``, unchecked and unrounded: a token or a count the handler checks."""

    is_template = True

    def preprocess(self, payload):
        return payload


def _param_control(methods: tuple, param):
    label = f"{', '.join(methods)}: {param.title} ({param.help})"
    if param.is_choice:
        return gr.Textbox(value=param.default, label=f"{label}: {param.bounds}")
    if param.integer and param.high - param.low > 256:
        return Number(value=param.default, precision=0, minimum=param.low, maximum=param.high, label=label)
    step = 1 if param.integer else (param.high - param.low) / 200
    return RangeSlider(param.low, param.high, value=param.default, step=step, label=label)


def build_layout(examples: list[dict], methods: list[str], default_model: str, models: list[str],
                 allow_any_model: bool) -> dict:
    """Every component of the page, by name (see the module docstring)."""
    first = examples[0] if examples else None
    c: dict = {"state": gr.State(None), "example": gr.State(first)}
    gr.Markdown(
        "# dualview · visual-token pruning in the dual form of attention\n"
        "Each visual token writes one rank-1 update into the implicit weight $W$ of attention. "
        "**Magnitude** says how much the prompt reads it, **duplication** how much it repeats others; "
        "**PC-MMR** keeps high-magnitude, non-duplicated tokens in growing chunks. "
        "The built-in model is a small VLM trained on a synthetic *shapes world*: ask it questions in "
        "that grammar (colour, shape, count, position, letter); anything else gets whatever it says.",
        latex_delimiters=LATEX)
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            c["image"] = ImageUpload(label="Image", value=first["path"] if first else None,
                                     sources=["upload", "clipboard"], height=220, elem_id="input-image")
            c["prompt"] = gr.Textbox(label="Prompt", value=first["question"] if first else "", lines=1, elem_id="prompt")
            with gr.Row():
                c["method"] = Choice(methods, value="iwp", label="Method", elem_id="method", scale=2)
                c["run"] = gr.Button("Run", variant="primary", elem_id="run", scale=1)
            c["budget"] = RangeSlider(1, 196, value=69, step=1, label="Budget (kept visual tokens)", elem_id="budget")
            c["preset"] = ChoiceRadio(preset_labels(), label="Paper budgets", elem_id="preset")
            c["status"] = gr.Markdown("Pick an example or upload an image, then press **Run**.", elem_id="status")
            c["gallery"] = gr.Gallery(label="Examples (click one)", value=[(e["path"], e["question"]) for e in examples],
                                      columns=4, height=170, allow_preview=False, elem_id="examples")
            c["model"] = Choice(models, value=default_model, allow_custom_value=allow_any_model, elem_id="model",
                                     label="Model" + (" (or type a directory or a Hugging Face id on disk)"
                                                      if allow_any_model else ""))
            c["layer"] = gr.Textbox(value="", label="Pruning layer (empty: the paper's default)", elem_id="layer")
            with gr.Accordion("Method parameters", open=False):
                c["params"] = [_param_control(methods, param) for methods, param in PARAM_CONTROLS]
        with gr.Column(scale=3):
            with gr.Tabs():
                with gr.Tab("Dual-form maps"):
                    c["answers"] = gr.Markdown("*Answers appear here after Run.*", elem_id="answers")
                    with gr.Row():
                        c["magnitude"] = gr.Plot(label="magnitude", elem_id="map-magnitude")
                        c["duplication"] = gr.Plot(label="duplication", elem_id="map-duplication")
                        c["kept"] = gr.Plot(label="kept", elem_id="map-kept")
                    with gr.Row():
                        with gr.Column(scale=1, min_width=240):
                            c["picker"] = gr.Image(label=f"Pick a patch (click) · {PICKER_LEGEND}", type="pil", interactive=False,
                                                   height=300, elem_id="picker")
                            c["picker_timer"] = gr.Timer(PICKER_REFRESH_S, active=False)  # on from a click to the redraw
                            c["click_mode"] = ChoiceRadio(list(CLICK_MODES), value="inspect",
                                                       label="A click on a patch will…", elem_id="click-mode")
                            c["token"] = Number(value=0, precision=0, label="Selected token", elem_id="token")
                            with gr.Row():
                                c["reanswer"] = gr.Button("Re-answer with forced patches", elem_id="reanswer")
                                c["clear_forced"] = gr.Button("Clear forced patches")
                        with gr.Column(scale=1, min_width=240):
                            c["row"] = gr.Plot(label="duplication row", elem_id="map-row")
                        with gr.Column(scale=1, min_width=240):
                            c["space"] = gr.Plot(label="token space (hover: linked to the kept map)", elem_id="space")
                            c["space_kind"] = ChoiceRadio(["keys", "values"], value="keys", label="PCA of the tokens'")
                    c["teaching"] = gr.Markdown(latex_delimiters=LATEX, elem_classes=["teach"], elem_id="teaching")
                for which, tab, text, label, interval in (
                        ("pcmmr", "PC-MMR step by step", "One frame per round: kept tokens coloured by the round that "
                         "took them, this round's chunk in cyan, the remaining tokens' penalised scores as a "
                         "heat-map (colour on a log scale: white is the round's largest score, black 10⁻⁴ of it or "
                         "less; hover for the score). Stepping and Play run in your browser.", STEP_LABEL, PLAY_INTERVAL_S),
                        ("classic", "Classic MMR", "Classic MMR for comparison: one token per step (computed when "
                         "this tab opens: at thousands of tokens it is the costliest selection). The heat-map shows "
                         "the scores of the first step (relevance); the steps reveal the kept tokens.", STEP_LABEL,
                         PLAY_INTERVAL_S / 3)):
                    prefix = "mmr" if which == "classic" else which
                    with gr.Tab(tab, elem_id=f"tab-{prefix}") as c[f"{which}_tab"]:
                        gr.Markdown(text)
                        c[f"{which}_plot"] = gr.Plot(elem_id=f"{prefix}-plot")
                        with gr.Row():
                            c[f"{which}_play"] = gr.Button("▶ Play", elem_id=f"{prefix}-play", scale=0)
                            c[f"{which}_pause"] = gr.Button("Pause", elem_id=f"{prefix}-pause", scale=0)
                            c[f"{which}_step"] = RangeSlider(0, 1, value=0, step=1, label=label, elem_id=f"{prefix}-step")
                        c[f"{which}_timer"] = gr.Timer(interval, active=False)
                        c[f"{which}_api"] = gr.Button(visible=False)  # /pcmmr_step, /classic_step: API clients only
                with gr.Tab("Debug the answer", elem_id="tab-debug"):
                    c["debug"] = gr.Markdown(latex_delimiters=LATEX, elem_id="debug")
                    with gr.Row():
                        c["attention_map"] = gr.Plot(label="attention received", elem_id="map-attention")
                        c["share_map"] = gr.Plot(label="update share", elem_id="map-share")
                    with gr.Row():
                        c["restore_calls"] = Number(value=64, precision=0, minimum=1, maximum=512,
                                                       label="forward passes the search may spend")
                        c["restore_button"] = gr.Button("What brings the answer back?", elem_id="restore")
                    c["restore_text"] = gr.Markdown(elem_id="restore-text")
                    with gr.Row():
                        c["restore_map"] = gr.Plot(label="order of return", elem_id="map-restore")
                        c["first_order_map"] = gr.Plot(label="first-order effect", elem_id="map-first-order")
                    c["restore_curve"] = gr.Plot(elem_id="restore-curve")
                with gr.Tab("Low-rank error"):
                    c["with_oracle"] = gr.Checkbox(False, label="add the greedy oracle (slower)", elem_id="oracle")
                    c["curves"] = gr.Plot(elem_id="curves")
                    c["per_head"] = gr.Markdown()
                    c["curve_data"] = gr.JSON(visible=False)
                with gr.Tab("Every method"):
                    c["answer_all"] = gr.Button("Answer with every method at this budget")
                    c["table_note"] = gr.Markdown(elem_id="table-note")
                    c["method_table"] = gr.Dataframe(headers=["method", "kept", "answer", "agrees with full",
                                                              "weight error", "prefill s"], interactive=False)
                with gr.Tab("Sweep", elem_id="tab-sweep"):
                    from dualview import sweep

                    gr.Markdown("Answer every example scene with each method, budget and seed (the seeds apply to "
                                "methods with a seed, such as random) with the model, layer and method parameters on "
                                f"the left; at most {sweep.MAX_APP_RUNS} pruned answers (examples × methods × budgets × "
                                "seeds), one sweep at a time; the greedy oracle is left out (its cost grows with the "
                                "square of the sequence). The CLI's `python -m dualview sweep` runs larger sweeps and "
                                "folders of your own images.")
                    with gr.Row():
                        c["sweep_methods"] = Choices([m for m in methods if m not in sweep.APP_EXCLUDED],
                                                              value=["iwp", "iwp-magnitude", "fastv", "random"],
                                                              label="methods", elem_id="sweep-methods")
                        c["sweep_budgets"] = gr.Textbox(", ".join(sweep.DEFAULT_BUDGETS), elem_id="sweep-budgets",
                                                        label="budgets (counts, fractions or percentages)")
                        c["sweep_seeds"] = gr.Textbox(", ".join(map(str, sweep.DEFAULT_SEEDS)), label="seeds",
                                                      elem_id="sweep-seeds")
                    c["sweep_button"] = gr.Button("Sweep the examples", elem_id="sweep")
                    c["sweep_text"] = gr.Markdown(elem_id="sweep-text")
                    c["sweep_table"] = gr.Dataframe(label="flip rate: pruned answer differs from the full answer",
                                                    interactive=False, elem_id="sweep-table")
                    c["sweep_items"] = gr.Dataframe(label="items that flip: the budgets at which each method flips them",
                                                    interactive=False, elem_id="sweep-items")
                    c["sweep_files"] = gr.File(label="rows (CSV), summary (CSV) and everything (JSON)",
                                               file_count="multiple", elem_id="sweep-files")
                with gr.Tab("Compare methods"):
                    c["compare_methods"] = Choices(methods, value=["iwp", "iwp-magnitude", "fastv", "divprune"],
                                                            label="methods")
                    c["compare_button"] = gr.Button("Compare kept masks")
                    c["compare_note"] = gr.Markdown(elem_id="compare-note")
                    c["compare"] = gr.Plot(elem_id="compare")
                with gr.Tab("Export"):
                    gr.Markdown("Every figure saves itself as PNG from the camera icon of its toolbar.")
                    c["export_button"] = gr.Button("Export JSON + animation")
                    c["files"] = gr.File(label="files", file_count="multiple")
                    c["command"] = gr.Textbox(label="CLI command that reproduces this view", interactive=False)
                    c["summary"] = gr.JSON(label="summary of what is shown", elem_id="summary")
    c["example_name"] = gr.Textbox(visible=False)
    return c
