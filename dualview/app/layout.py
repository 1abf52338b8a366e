"""The page's components and their arrangement; no behaviour (that is :mod:`dualview.app.ui`).

:func:`build_layout` must be called inside a ``gr.Blocks`` context; it returns every component
by name. The names of the views handlers fill are :data:`VIEWS`; the parameter controls are
built from the method registry, one per :data:`dualview.app.handlers.PARAM_CONTROLS` entry.
"""

from __future__ import annotations

import base64

import gradio as gr

from dualview.app.handlers import PARAM_CONTROLS, preset_labels

LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
CSS = """
#status {min-height: 2.5em}
#answers {min-height: 330px}
.teach {font-size: 0.95em}
"""
PLAY_INTERVAL_S = 0.9
VIEWS = ("state", "status", "magnitude", "duplication", "kept", "row", "teaching", "picker", "token",
         "pcmmr_plot", "pcmmr_step", "classic_plot", "classic_step", "budget", "command", "summary", "space_kind",
         "answers", "curves", "space", "method_table", "per_head", "debug", "attention_map", "share_map")
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


class RangeSlider(gr.Slider):
    """``gr.Slider`` whose value reaches the handler unchecked: the range that matters (the visual
    tokens of the loaded model and image, the rounds of a selection) is only known after a Run and
    differs per visitor, so the validator checks it (one sentence), not the slider as built."""

    is_template = True  # gradio: draw it with gr.Slider's front end

    def preprocess(self, payload: float) -> float:
        return payload


def _param_control(methods: tuple, param):
    label = f"{', '.join(methods)}: {param.title} ({param.help})"
    if param.is_choice:
        return gr.Textbox(value=param.default, label=f"{label}: {param.bounds}")
    if param.integer and param.high - param.low > 256:
        return gr.Number(value=param.default, precision=0, minimum=param.low, maximum=param.high, label=label)
    step = 1 if param.integer else (param.high - param.low) / 200
    return gr.Slider(param.low, param.high, value=param.default, step=step, label=label)


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
                c["method"] = gr.Dropdown(methods, value="iwp", label="Method", elem_id="method", scale=2)
                c["run"] = gr.Button("Run", variant="primary", elem_id="run", scale=1)
            c["budget"] = RangeSlider(1, 196, value=69, step=1, label="Budget (kept visual tokens)", elem_id="budget")
            c["preset"] = gr.Radio(preset_labels(), label="Paper budgets", elem_id="preset")
            c["status"] = gr.Markdown("Pick an example or upload an image, then press **Run**.", elem_id="status")
            c["gallery"] = gr.Gallery(label="Examples (click one)", value=[(e["path"], e["question"]) for e in examples],
                                      columns=4, height=170, allow_preview=False, elem_id="examples")
            c["model"] = gr.Dropdown(models, value=default_model, allow_custom_value=allow_any_model, elem_id="model",
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
                            c["picker"] = gr.Image(label="Pick a patch (click)", type="pil", interactive=False,
                                                   height=300, elem_id="picker")
                            c["click_mode"] = gr.Radio(["inspect", "force keep", "force drop"], value="inspect",
                                                       label="A click on a patch will…", elem_id="click-mode")
                            c["token"] = gr.Number(value=0, precision=0, label="Selected token", elem_id="token")
                            with gr.Row():
                                c["reanswer"] = gr.Button("Re-answer with forced patches", elem_id="reanswer")
                                c["clear_forced"] = gr.Button("Clear forced patches")
                        with gr.Column(scale=1, min_width=240):
                            c["row"] = gr.Plot(label="duplication row", elem_id="map-row")
                        with gr.Column(scale=1, min_width=240):
                            c["space"] = gr.Plot(label="token space (hover: linked to the kept map)", elem_id="space")
                            c["space_kind"] = gr.Radio(["keys", "values"], value="keys", label="PCA of the tokens'")
                    c["teaching"] = gr.Markdown(latex_delimiters=LATEX, elem_classes=["teach"], elem_id="teaching")
                for which, tab, text, label, interval in (
                        ("pcmmr", "PC-MMR step by step", "One frame per round: kept tokens coloured by the round that "
                         "took them, this round's chunk in cyan, the remaining tokens' penalised scores as a "
                         "heat-map (colour on a log scale: white is the round's largest score, black 10⁻⁴ of it or "
                         "less; hover for the score). Stepping and Play run in your browser.", "round (0-based)", PLAY_INTERVAL_S),
                        ("classic", "Classic MMR", "Classic MMR for comparison: one token per step (computed when "
                         "this tab opens: at thousands of tokens it is the costliest selection). The heat-map shows "
                         "the scores of the first step (relevance); the steps reveal the kept tokens.", "step (0-based)",
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
                        c["restore_calls"] = gr.Number(value=64, precision=0, minimum=1, maximum=512,
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
                    c["method_table"] = gr.Dataframe(headers=["method", "kept", "answer", "agrees with full",
                                                              "weight error", "prefill s"], interactive=False)
                with gr.Tab("Compare methods"):
                    c["compare_methods"] = gr.CheckboxGroup(methods, value=["iwp", "iwp-magnitude", "fastv", "divprune"],
                                                            label="methods")
                    c["compare_button"] = gr.Button("Compare kept masks")
                    c["compare"] = gr.Plot(elem_id="compare")
                with gr.Tab("Export"):
                    gr.Markdown("Every figure saves itself as PNG from the camera icon of its toolbar.")
                    c["export_button"] = gr.Button("Export JSON + animation")
                    c["files"] = gr.File(label="files", file_count="multiple")
                    c["command"] = gr.Textbox(label="CLI command that reproduces this view", interactive=False)
                    c["summary"] = gr.JSON(label="summary of what is shown", elem_id="summary")
    c["example_name"] = gr.Textbox(visible=False)
    return c
