"""The Gradio page: wiring of inputs, views and named API endpoints (no computation here).

Computation lives in :mod:`dualview.app.service`, drawing in :mod:`dualview.figures`, request
checks in :mod:`dualview.validation`. Every event is named (``api_name``) so ``gradio_client``
can drive the same code paths as the browser. Per-user results live in ``gr.State``; the model
is shared through one :class:`ModelHolder`.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import math
import shlex
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

import dualview
from dualview import figures
from dualview.app.examples import load_examples
from dualview.app.service import CURVE_METHODS, PRESETS, ModelHolder, Workspace, new_workspace
from dualview.errors import DualviewError
from dualview.validation import parse_budget, validate_request

PLAY_INTERVAL_S = 0.9
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
CSS = """
#status {min-height: 2.5em}
.teach {font-size: 0.95em}
"""


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


class ImageUpload(gr.Image):
    """``gr.Image`` whose handler gets the upload undecoded (its file path, or the bytes of a data
    URL), so :func:`dualview.validation.load_image` alone decodes it: bomb check before decoding,
    16-bit rescaling, one sentence for files that are not images. Same front end as gr.Image."""

    is_template = True  # gradio: draw it with gr.Image's front end

    def preprocess(self, payload) -> str | bytes | None:
        if payload is None:
            return None
        if payload.path is None and payload.url and payload.url.startswith("data:"):
            return base64.b64decode(payload.url.partition(",")[2])
        return payload.path


def _require(workspace: Workspace | None) -> Workspace:
    if workspace is None:
        raise DualviewError("Run an analysis first (pick an example or upload an image, then press Run).")
    return workspace


# --- views of a workspace (plain figures / text) --------------------------------------------------


def _hover_numbers(ws: Workspace) -> dict:
    a = ws.analysis
    return {"κ(q_T,k) logit": a.kernel_logit.numpy(), "‖v‖": a.value_norm.numpy(),
            "magnitude": a.magnitude.numpy(), "duplication": a.token_duplication.numpy()}


def magnitude_figure(ws: Workspace):
    return figures.token_map(ws.layout, ws.analysis.magnitude.numpy(), image=ws.request.image,
                             title="Magnitude P = κ(q_T,k)·‖v‖", hover=_hover_numbers(ws),
                             colorscale="Inferno", colorbar_title="P", selected=ws.selected,
                             evidence=ws.evidence_boxes())


def duplication_figure(ws: Workspace):
    return figures.token_map(ws.layout, ws.analysis.token_duplication.numpy(), image=ws.request.image,
                             title="Duplication (top-8 mean S̄²)", hover=_hover_numbers(ws),
                             colorscale="Viridis", zmin=0.0, zmax=1.0, colorbar_title="S̄²", selected=ws.selected)


def kept_figure(ws: Workspace):
    kept = ws.kept()
    return figures.kept_map(ws.layout, ws.rounds(), image=ws.request.image, hover=_hover_numbers(ws),
                            title=f"Kept: {len(kept)} / {ws.num_visual} ({ws.request.method})",
                            num_rounds=len(ws.selection.chunks) + (1 if ws.forced_keep else 0),
                            selected=ws.selected, evidence=ws.evidence_boxes(),
                            forced={"keep": ws.forced_keep, "drop": ws.forced_drop})


def row_figure(ws: Workspace):
    token = ws.selected
    row = ws.analysis.duplication[token].numpy()
    return figures.token_map(ws.layout, row, image=ws.request.image, hover={"S̄² with selected": row},
                             title=f"Which patches duplicate token {token}: row {token} of S̄²",
                             colorscale="Viridis", zmin=0.0, zmax=1.0, colorbar_title="S̄²", selected=token)


def step_figure(ws: Workspace, which: str, step: int):
    selection = ws.pcmmr if which == "pcmmr" else ws.classic
    return figures.selection_step(
        ws.layout, [c.tolist() for c in selection.chunks], [s.numpy() for s in selection.scores],
        selection.floored, step, image=ws.request.image,
        label="PC-MMR" if which == "pcmmr" else "classic MMR", log_scores=which == "pcmmr")


def steps_of(ws: Workspace, which: str) -> int:
    return len((ws.pcmmr if which == "pcmmr" else ws.classic).chunks)


def curves_figure(ws: Workspace, with_oracle: bool):
    return figures.error_curves(ws.curve_budgets(), ws.update_curves(with_oracle), current=len(ws.kept()),
                                num_visual=ws.num_visual, highlight=ws.request.method)


def space_figure(ws: Workspace):
    kind = ws.space_kind
    rounds = ws.rounds()
    return figures.token_space(ws.projection(kind), rounds, selected=ws.selected,
                               title=f"PCA of the visual tokens' {kind} at layer {ws.analysis.layer}",
                               hover={"magnitude": ws.analysis.magnitude.numpy()},
                               num_rounds=int(rounds.max()) + 1 if rounds.max() >= 0 else 1)


def teaching_text(ws: Workspace) -> str:
    n = ws.token_numbers(ws.selected)
    r = ws.request
    kept_text = (f"kept in round {n['round'] + 1}" if n["round"] >= 0 else "dropped")
    score = "—" if n["penalised_score"] is None else f"{n['penalised_score']:.3g}"
    return "\n".join([
        f"**Token {n['token']}** of {ws.num_visual} (click a patch in *Pick a patch* to change it); "
        f"layer {ws.analysis.layer}, method {r.method}, {kept_text}.",
        "",
        "1. Attention is an implicit linear layer: $\\mathrm{out}(q)=\\eta(q)\\,\\varphi(q)\\,W,\\;"
        "W=\\sum_i \\Delta W_i,\\;\\Delta W_i=\\varphi(k_i)^\\top v_i$; here "
        f"$\\log\\lVert\\Delta W_{{{n['token']}}}\\rVert_F = \\tfrac12 k_i\\!\\cdot\\!k_i/\\sqrt d+\\log\\lVert v_i\\rVert"
        f" = {n['update_norm_log']:.3f}$ (mean over heads).",
        "2. Information magnitude: $P_i=\\kappa(q_T,k_i)\\,\\lVert v_i\\rVert$ with "
        f"$q_T\\!\\cdot\\!k_i/\\sqrt d={n['kernel_logit']:.3f}$, $\\lVert v_i\\rVert={n['value_norm']:.3f}$ "
        f"→ $P_i={n['magnitude']:.4f}$ (per head scaled so the largest is 1, then averaged).",
        "3. Information duplication: $\\bar S^2_{ij}=\\mathrm{mean}_h\\big(\\cos(v_i,v_j)\\,"
        "e^{-\\lVert k_i-k_j\\rVert^2/2\\sqrt d}\\big)^2$; its closest duplicate is token "
        f"{n['partner']} with $\\bar S^2={n['partner_duplication']:.3f}$; mean of its 8 largest: "
        f"{n['token_duplication']:.3f}.",
        f"4. PC-MMR (b₀={r.b0}, g={r.growth}, λ={r.lam:g}): after each chunk L, "
        "$P_i\\leftarrow P_i\\cdot\\max(0.01,\\,1-\\lambda\\max_{j\\in L}\\bar S^2_{ij})$; "
        f"this token's score in the last round: {score}. Error of the kept set: "
        f"$\\lVert W-W_S\\rVert/\\lVert W\\rVert = {ws.current_measures()['weight_error']:.4f}$.",
    ])


def answers_text(ws: Workspace) -> str:
    ans = ws.answers
    if ans is None:
        return "*Answers appear here after Run.*"
    agree = "✅ the answers agree" if ans.agree else "⚠️ the answers differ"
    lines = [
        "| | full (all tokens) | pruned |",
        "|---|---|---|",
        f"| answer | **{ans.full_text or '∅'}** | **{ans.pruned_text or '∅'}** |",
        f"| tokens after the pruning layer | {ans.prompt_tokens} | {ans.kept_tokens} |",
        f"| prefill time | {ans.full_prefill * 1000:.1f} ms | {ans.pruned_prefill * 1000:.1f} ms |",
        f"| log p(full answer) | {ans.full_logprob:.3f} | {ans.pruned_logprob:.3f} |",
        "",
        f"{agree}; log-probability drop of the full answer: **{ans.full_logprob - ans.pruned_logprob:.3f}** nats.",
    ]
    if ws.example:
        truth = ws.example.get("answer")
        lines.append(f"\nGround truth of this example: **{truth}** (full answer "
                     f"{'right' if ans.full_text.strip().lower() == str(truth).lower() else 'wrong'}, pruned answer "
                     f"{'right' if ans.pruned_text.strip().lower() == str(truth).lower() else 'wrong'}).")
        evidence = ws.evidence_tokens()
        if evidence:
            kept_evidence = sorted(set(evidence) & set(ws.kept()))
            if not kept_evidence:
                lines.append(f"\n⚠️ **The kept set dropped every patch of the evidence** "
                             f"({len(evidence)} patches cover the objects the question is about).")
            else:
                lines.append(f"\nEvidence: {len(kept_evidence)} of its {len(evidence)} patches are kept.")
    return "\n".join(lines)


def status_text(ws: Workspace) -> str:
    m = ws.current_measures()
    forced = ""
    if ws.forced_keep or ws.forced_drop:
        forced = f" (forced: +{len(ws.forced_keep)} / −{len(ws.forced_drop)})"
    return (f"**{ws.request.method}** keeps **{len(ws.kept())}** of {ws.num_visual} visual tokens{forced} "
            f"({100 * len(ws.kept()) / ws.num_visual:.1f} %) · ‖W−W_S‖/‖W‖ = {m['weight_error']:.4f} · "
            f"effective rank {m['effective_rank']:.2f} · visual part only: {m['visual_weight_error']:.4f}, "
            f"rank {m['visual_effective_rank']:.2f} · attention-output error {m['attention_error']:.4f} · "
            f"layer {ws.analysis.layer} of {ws.analysis.num_layers} · “{ws.request.prompt}”")


def summary(ws: Workspace) -> dict:
    """The JSON of what is shown (also the API's content to check)."""
    r = ws.request
    kept = ws.kept()
    rounds = ws.rounds()
    return {
        "dualview_version": dualview.__version__,
        "model": ws.model_name,
        "settings": {"prompt": r.prompt, "method": r.method, "budget": r.budget, "layer": ws.analysis.layer,
                     "prune_layer": ws.analysis.prune_layer(r.method), "b0": r.b0, "growth": r.growth, "lam": r.lam,
                     "image_size": list(r.image.size), "example": ws.example.get("name") if ws.example else None},
        "num_visual": ws.num_visual,
        "kept": kept,
        "kept_count": len(kept),
        "rounds": [int(x) for x in rounds],
        "forced_keep": list(ws.forced_keep),
        "forced_drop": list(ws.forced_drop),
        "measures": ws.current_measures(),
        "pcmmr": {"chunks": [c.tolist() for c in ws.pcmmr.chunks], "floored": list(ws.pcmmr.floored)},
        "answers": ws.answers.to_dict() if ws.answers else None,
        "selected_token": ws.token_numbers(ws.selected),
    }


def _finite(values) -> list:
    return [None if not math.isfinite(float(v)) else round(float(v), 6) for v in values]


def export_payload(ws: Workspace) -> dict:
    """Everything shown: summary plus per-token scores, per-round scores, layout, curves, tables."""
    a = ws.analysis
    payload = summary(ws)
    payload.update({
        "layout": ws.layout,
        "magnitude": _finite(a.magnitude), "kernel_logit": _finite(a.kernel_logit),
        "value_norm": _finite(a.value_norm), "token_duplication": _finite(a.token_duplication),
        "duplication_row_of_selected": _finite(a.duplication[ws.selected]),
        "pcmmr_round_scores": [_finite(s) for s in ws.pcmmr.scores],
        "classic_mmr": {"kept": ws.classic.kept.tolist()},
        "curves": {"budgets": ws.curve_budgets(), "methods": ws.curves},
        "method_answers": [dict(zip(("method", "kept", "answer", "agrees", "weight_error", "prefill_s"), row))
                           for row in ws.method_answers],
        "evidence_tokens": ws.evidence_tokens(),
        "cli": cli_command(ws),
    })
    return payload


def cli_command(ws: Workspace) -> str:
    """The CLI call that reproduces this view's kept set and answers (``python -m dualview answer``)."""
    r = ws.request
    image = ws.example["path"] if ws.example else "IMAGE.png"
    parts = ["python", "-m", "dualview", "answer", "--model", ws.model_name, "--image", image,
             "--prompt", r.prompt, "--method", r.method, "--budget", str(r.budget), "--layer", str(ws.analysis.layer)]
    for name, value in ws.params().items():
        parts += ["--param", f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"]
    return " ".join(shlex.quote(p) for p in parts + ["--json"])


# --- the page -------------------------------------------------------------------------------------


def build_demo(holder: ModelHolder, default_model: str = "builtin", examples_dir: str | Path | None = None) -> gr.Blocks:
    """The whole app. ``default_model`` is loaded on the first Run (or before launch by the caller)."""
    examples = load_examples(examples_dir) if examples_dir else load_examples()
    methods = dualview_methods()
    first = examples[0] if examples else None

    with gr.Blocks(title="dualview", analytics_enabled=False) as demo:  # no usage reports leave the machine
        workspace = gr.State(None)
        example_state = gr.State(first)
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
                image = ImageUpload(label="Image", value=first["path"] if first else None,
                                 sources=["upload", "clipboard"], height=260, elem_id="input-image")
                gallery = gr.Gallery(label="Examples (click one)", value=[(e["path"], e["question"]) for e in examples],
                                     columns=4, height=170, allow_preview=False, elem_id="examples")
                prompt = gr.Textbox(label="Prompt", value=first["question"] if first else "", lines=1, elem_id="prompt")
                model = gr.Textbox(label="Model (builtin, a directory, or a Hugging Face id on disk)",
                                   value=default_model, elem_id="model")
                method = gr.Dropdown(methods, value="iwp", label="Method", elem_id="method")
                budget = gr.Slider(1, 196, value=69, step=1, label="Budget (kept visual tokens)", elem_id="budget")
                preset = gr.Radio([f"{100 * p:.1f} %" for p in PRESETS], label="Paper budgets", elem_id="preset")
                layer = gr.Textbox(value="", label="Pruning layer (empty: the paper's default)", elem_id="layer")
                with gr.Accordion("PC-MMR parameters", open=False):
                    b0 = gr.Slider(1, 64, value=2, step=1, label="b₀ (first chunk)")
                    growth = gr.Slider(1, 8, value=2, step=1, label="g (chunk growth)")
                    lam = gr.Slider(0.0, 20.0, value=5.0, step=0.5, label="λ (duplication penalty)")
                run = gr.Button("Run", variant="primary", elem_id="run")
                status = gr.Markdown("Pick an example or upload an image, then press **Run**.", elem_id="status")
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Dual-form maps"):
                        with gr.Row():
                            magnitude_plot = gr.Plot(label="magnitude", elem_id="map-magnitude")
                            duplication_plot = gr.Plot(label="duplication", elem_id="map-duplication")
                            kept_plot = gr.Plot(label="kept", elem_id="map-kept")
                        with gr.Row():
                            with gr.Column(scale=1, min_width=240):
                                picker = gr.Image(label="Pick a patch (click)", type="pil", interactive=False,
                                                  height=300, elem_id="picker")
                                click_mode = gr.Radio(["inspect", "force keep", "force drop"], value="inspect",
                                                      label="A click on a patch will…", elem_id="click-mode")
                                token = gr.Number(value=0, precision=0, label="Selected token", elem_id="token")
                                with gr.Row():
                                    reanswer = gr.Button("Re-answer with forced patches", elem_id="reanswer")
                                    clear_forced = gr.Button("Clear forced patches")
                            with gr.Column(scale=1, min_width=240):
                                row_plot = gr.Plot(label="duplication row", elem_id="map-row")
                            with gr.Column(scale=1, min_width=240):
                                space_plot = gr.Plot(label="token space (hover: linked to the kept map)",
                                                     elem_id="space")
                                space_kind = gr.Radio(["keys", "values"], value="keys", label="PCA of the tokens'")
                        teaching = gr.Markdown(latex_delimiters=LATEX, elem_classes=["teach"], elem_id="teaching")
                    with gr.Tab("PC-MMR step by step", elem_id="tab-steps"):
                        gr.Markdown("One frame per round: kept tokens coloured by the round that took them, "
                                    "this round's chunk outlined in cyan, the remaining tokens' penalised scores "
                                    "as a heat-map. Classic MMR below takes one token per step.")
                        pcmmr_plot = gr.Plot(elem_id="pcmmr-plot")
                        with gr.Row():
                            pcmmr_play = gr.Button("▶ Play", elem_id="pcmmr-play", scale=0)
                            pcmmr_pause = gr.Button("Pause", elem_id="pcmmr-pause", scale=0)
                            pcmmr_step = gr.Slider(0, 1, value=0, step=1, label="round (0-based)", elem_id="pcmmr-step")
                        mmr_plot = gr.Plot(elem_id="mmr-plot")
                        with gr.Row():
                            mmr_play = gr.Button("▶ Play", elem_id="mmr-play", scale=0)
                            mmr_pause = gr.Button("Pause", elem_id="mmr-pause", scale=0)
                            mmr_step = gr.Slider(0, 1, value=0, step=1, label="step (0-based)", elem_id="mmr-step")
                        pcmmr_timer = gr.Timer(PLAY_INTERVAL_S, active=False)
                        mmr_timer = gr.Timer(PLAY_INTERVAL_S / 3, active=False)
                    with gr.Tab("Low-rank error"):
                        with_oracle = gr.Checkbox(False, label="add the greedy oracle (slower)", elem_id="oracle")
                        curves_plot = gr.Plot(elem_id="curves")
                        per_head = gr.Markdown()
                    with gr.Tab("Answers"):
                        answers = gr.Markdown("*Answers appear here after Run.*", elem_id="answers")
                        answer_all = gr.Button("Answer with every method at this budget")
                        method_table = gr.Dataframe(headers=["method", "kept", "answer", "agrees with full",
                                                             "weight error", "prefill s"], interactive=False)
                    with gr.Tab("Compare methods"):
                        compare_methods = gr.CheckboxGroup(methods, value=["iwp", "iwp-magnitude", "fastv", "divprune"],
                                                           label="methods")
                        compare_button = gr.Button("Compare kept masks")
                        compare_plot = gr.Plot(elem_id="compare")
                    with gr.Tab("Export"):
                        gr.Markdown("Every figure saves itself as PNG from the camera icon of its toolbar.")
                        export_button = gr.Button("Export JSON + animation")
                        export_files = gr.File(label="files", file_count="multiple")
                        command = gr.Textbox(label="CLI command that reproduces this view", interactive=False)
                        shown = gr.JSON(label="summary of what is shown", elem_id="summary")

        # -- handlers ------------------------------------------------------------------------------
        def fresh_views(ws: Workspace, unchanged=()) -> dict:
            """Every view, for a new or re-selected workspace; views in ``unchanged`` are skipped
            (not even drawn)."""
            makers = {
                workspace: lambda: ws, status: lambda: status_text(ws),
                magnitude_plot: lambda: magnitude_figure(ws), duplication_plot: lambda: duplication_figure(ws),
                kept_plot: lambda: kept_figure(ws), row_plot: lambda: row_figure(ws),
                teaching: lambda: teaching_text(ws), picker: lambda: ws.request.image, token: lambda: ws.selected,
                pcmmr_plot: lambda: step_figure(ws, "pcmmr", 0),
                pcmmr_step: lambda: gr.Slider(0, max(1, steps_of(ws, "pcmmr") - 1), value=0, step=1),
                mmr_plot: lambda: step_figure(ws, "classic", 0),
                mmr_step: lambda: gr.Slider(0, max(1, steps_of(ws, "classic") - 1), value=0, step=1),
                budget: lambda: gr.Slider(1, ws.num_visual, value=ws.budget, step=1),
                command: lambda: cli_command(ws), shown: lambda: summary(ws), space_kind: lambda: ws.space_kind,
            }
            return {view: gr.skip() if view in unchanged else make() for view, make in makers.items()}

        fresh_outputs = [workspace, status, magnitude_plot, duplication_plot, kept_plot, row_plot, teaching, picker,
                         token, pcmmr_plot, pcmmr_step, mmr_plot, mmr_step, budget, command, shown, space_kind]

        @user_errors
        def do_run(image_value, prompt_value, model_name, method_value, budget_value, layer_value,
                   b0_value, growth_value, lam_value, example, progress=gr.Progress()):
            progress(0.05, desc="loading the model")
            request = validate_request(image_value, prompt_value, budget_value, method=method_value,
                                       layer=layer_value, b0=b0_value, growth=growth_value, lam=lam_value)
            session = holder.get(model_name)
            request = validate_request(request.image, request.prompt, request.budget, method=request.method,
                                       layer=request.layer, b0=request.b0, growth=request.growth, lam=request.lam,
                                       num_layers=session.num_layers)
            if example is not None and (image_value is None or not _same_image(request.image, example)):
                example = None
            progress(0.3, desc="analysing")
            with holder.lock:
                analysis = session.analyze(request.image, request.prompt, layer=request.layer)
            request = dataclasses.replace(request, budget=parse_budget(request.budget, analysis.num_visual))
            ws = new_workspace(analysis, request, (model_name or "builtin").strip(), example)
            progress(0.6, desc="answering")
            ws.answer(holder, session)
            views = fresh_views(ws)
            # the error curves (dozens of selections) follow in a chained step: see refresh_curves
            views.update({answers: answers_text(ws), curves_plot: None,
                          space_plot: space_figure(ws), method_table: None, per_head: per_head_text(ws)})
            return views

        @user_errors
        def refresh_curves(with_oracle_value, ws, progress=gr.Progress()):
            """Compute the missing curves and redraw; when they were current, the event before drew them."""
            if ws is None or ws.curves_current(with_oracle_value):
                return gr.skip()
            progress(0.1, desc="selecting at every budget")
            return curves_figure(ws, with_oracle_value)

        run_outputs = fresh_outputs + [answers, curves_plot, space_plot, method_table, per_head]
        run_inputs = [image, prompt, model, method, budget, layer, b0, growth, lam, example_state]
        run.click(do_run, run_inputs, run_outputs, api_name="run", concurrency_limit=2).then(
            refresh_curves, [with_oracle, workspace], [curves_plot], api_name=False, show_progress="minimal")

        @user_errors
        def do_update(method_value, budget_value, b0_value, growth_value, lam_value, with_oracle_value, ws):
            ws = _require(ws)
            request = validate_request(ws.request.image, ws.request.prompt, budget_value, method=method_value,
                                       layer=ws.request.layer, b0=b0_value, growth=growth_value, lam=lam_value,
                                       num_visual=ws.num_visual)
            ws.request = request
            ws.reselect()
            views = fresh_views(ws, unchanged=(magnitude_plot, duplication_plot, row_plot, picker, budget))
            current = ws.curves_current(with_oracle_value)  # else refresh_curves follows
            views.update({curves_plot: curves_figure(ws, with_oracle_value) if current else gr.skip(),
                          space_plot: space_figure(ws), per_head: per_head_text(ws)})
            return views

        update_inputs = [method, budget, b0, growth, lam, with_oracle, workspace]
        update_outputs = fresh_outputs + [curves_plot, space_plot, per_head]

        @user_errors
        def do_answer(ws):
            ws = _require(ws)
            ws.answer(holder, holder.get(ws.model_name))
            return ws, answers_text(ws), summary(ws)

        answer_outputs = [workspace, answers, shown]
        curve_step = dict(fn=refresh_curves, inputs=[with_oracle, workspace], outputs=[curves_plot], api_name=False,
                          show_progress="minimal")
        for event in (method.input, b0.release, growth.release, lam.release):
            event(do_update, update_inputs, update_outputs, api_name=False, show_progress="hidden").then(
                do_answer, [workspace], answer_outputs, api_name=False).then(**curve_step)
        budget.release(do_update, update_inputs, update_outputs, api_name="update", show_progress="hidden").then(
            do_answer, [workspace], answer_outputs, api_name="answer").then(**curve_step)
        reanswer.click(do_answer, [workspace], answer_outputs, api_name="reanswer")

        def do_preset(choice, ws):
            if ws is None or not choice:
                return gr.skip()
            return budget_from_preset(choice, ws.num_visual)

        preset.input(do_preset, [preset, workspace], [budget], api_name=False).then(
            do_update, update_inputs, update_outputs, api_name=False, show_progress="hidden").then(
            do_answer, [workspace], answer_outputs, api_name=False).then(**curve_step)

        @user_errors
        def do_inspect(token_value, mode, ws):
            """Select a token; in force modes toggle it in the forced keep / drop set."""
            ws = _require(ws)
            if token_value is None or not 0 <= int(token_value) < ws.num_visual:
                raise DualviewError(f"Token {token_value} does not exist: this image has tokens 0 to {ws.num_visual - 1}.")
            t = int(token_value)
            ws.selected = t
            if mode in ("force keep", "force drop"):
                mine, other = ((ws.forced_keep, ws.forced_drop) if mode == "force keep" else (ws.forced_drop, ws.forced_keep))
                if t in mine:
                    mine.remove(t)
                else:
                    mine.append(t)
                    if t in other:
                        other.remove(t)
            return {workspace: ws, token: t, row_plot: row_figure(ws), teaching: teaching_text(ws),
                    kept_plot: kept_figure(ws), magnitude_plot: magnitude_figure(ws),
                    duplication_plot: duplication_figure(ws), status: status_text(ws), shown: summary(ws),
                    space_plot: space_figure(ws)}

        inspect_outputs = [workspace, token, row_plot, teaching, kept_plot, magnitude_plot, duplication_plot, status,
                           shown, space_plot]
        token.submit(do_inspect, [token, click_mode, workspace], inspect_outputs, api_name="inspect")

        @user_errors
        def do_pick(mode, ws, evt: gr.SelectData):
            ws = _require(ws)
            x, y = evt.index
            hit = ws.token_at(float(x), float(y))
            if hit is None:
                raise DualviewError("That point is outside every visual token's patch (e.g. a centre-cropped border).")
            return do_inspect(hit, mode, ws)

        picker.select(do_pick, [click_mode, workspace], inspect_outputs, api_name=False)

        def do_clear(ws):
            ws = _require(ws)
            ws.forced_keep.clear()
            ws.forced_drop.clear()
            return {workspace: ws, kept_plot: kept_figure(ws), status: status_text(ws), shown: summary(ws)}

        clear_forced.click(user_errors(do_clear), [workspace], [workspace, kept_plot, status, shown], api_name="clear_forced")

        # -- animations: server-driven frames (a slider and a timer) -----------------------------
        def make_stepper(which: str):
            @user_errors
            def show(step_value, ws):
                ws = _require(ws)
                return step_figure(ws, which, int(step_value or 0))

            @user_errors
            def tick(step_value, ws):
                if ws is None:
                    return gr.skip(), gr.skip()
                nxt = (int(step_value or 0) + 1) % steps_of(ws, which)
                return nxt, step_figure(ws, which, nxt)

            return show, tick

        for which, plot, slider, play, pause, timer in (
                ("pcmmr", pcmmr_plot, pcmmr_step, pcmmr_play, pcmmr_pause, pcmmr_timer),
                ("classic", mmr_plot, mmr_step, mmr_play, mmr_pause, mmr_timer)):
            show, tick = make_stepper(which)
            slider.input(show, [slider, workspace], [plot], api_name=f"{which}_step", show_progress="hidden")
            timer.tick(tick, [slider, workspace], [slider, plot], api_name=False, show_progress="hidden")
            play.click(lambda: gr.Timer(active=True), None, [timer], api_name=False)
            pause.click(lambda: gr.Timer(active=False), None, [timer], api_name=False)

        # -- curves, token space, tables, comparison, export ------------------------------------
        @user_errors
        def do_curves(with_oracle_value, ws, progress=gr.Progress()):
            ws = _require(ws)
            progress(0.1, desc="selecting at every budget")
            return curves_figure(ws, with_oracle_value)

        with_oracle.change(do_curves, [with_oracle, workspace], [curves_plot], api_name="curves")

        @user_errors
        def do_curve_data(with_oracle_value, ws):
            ws = _require(ws)
            return {"budgets": ws.curve_budgets(), "methods": ws.update_curves(with_oracle_value)}

        curve_data = gr.JSON(visible=False)
        with_oracle.change(do_curve_data, [with_oracle, workspace], [curve_data], api_name="curve_data")

        @user_errors
        def do_space(kind, ws):
            ws = _require(ws)
            ws.space_kind = kind
            return space_figure(ws)

        space_kind.change(do_space, [space_kind, workspace], [space_plot], api_name="token_space")

        @user_errors
        def do_answer_all(ws, progress=gr.Progress()):
            ws = _require(ws)
            progress(0.1, desc="answering with every method")
            rows = ws.answer_every_method(holder, holder.get(ws.model_name), methods)
            return ws, rows

        answer_all.click(do_answer_all, [workspace], [workspace, method_table], api_name="answer_all")

        @user_errors
        def do_compare(chosen, ws):
            ws = _require(ws)
            if not chosen:
                raise DualviewError("Tick at least one method to compare.")
            kept = {m: ws.analysis.select(m, ws.budget, **ws.params(m)).kept.tolist() for m in chosen}
            errors = {m: ws.analysis.weight_error(k) for m, k in kept.items()}
            return figures.compare_kept(ws.layout, kept, image=ws.request.image, errors=errors,
                                        title=f"Kept masks at {ws.budget} of {ws.num_visual} tokens")

        compare_button.click(do_compare, [compare_methods, workspace], [compare_plot], api_name="compare")

        @user_errors
        def do_export(ws):
            ws = _require(ws)
            folder = Path(tempfile.mkdtemp(prefix="dualview-export-"))
            data = folder / "dualview.json"
            data.write_text(json.dumps(export_payload(ws), indent=1, allow_nan=False))
            frames = [step_figure(ws, "pcmmr", s) for s in range(steps_of(ws, "pcmmr"))]
            html = folder / "pcmmr-animation.html"
            html.write_text(figures.animation_html(frames, title="dualview: PC-MMR step by step"))
            return [str(data), str(html)], cli_command(ws)

        export_button.click(do_export, [workspace], [export_files, command], api_name="export")

        # -- examples ------------------------------------------------------------------------------
        def do_example(evt: gr.SelectData):
            chosen = examples[evt.index]
            return chosen["path"], chosen["question"], chosen

        gallery.select(do_example, None, [image, prompt, example_state], api_name=False).then(
            do_run, run_inputs, run_outputs, api_name=False).then(
            refresh_curves, [with_oracle, workspace], [curves_plot], api_name=False, show_progress="minimal")

        @user_errors
        def do_example_by_name(name):
            for e in examples:
                if e["name"] == name:
                    return e["path"], e["question"], e
            raise DualviewError(f"No example named {name!r}; known: {', '.join(e['name'] for e in examples)}.")

        example_name = gr.Textbox(visible=False)
        example_name.submit(do_example_by_name, [example_name], [image, prompt, example_state], api_name="example")
        image.upload(lambda: None, None, [example_state], api_name=False)

        if first is not None:
            demo.load(do_run, run_inputs, run_outputs, api_name=False).then(
                refresh_curves, [with_oracle, workspace], [curves_plot], api_name=False, show_progress="minimal")
    return demo


def dualview_methods() -> list[str]:
    from dualview.methods import method_names

    return method_names()


def budget_from_preset(choice: str, num_visual: int) -> int:
    """"35.3 %" -> a token count of Nv."""
    return parse_budget(f"{choice.replace(' ', '')}", num_visual)


def per_head_text(ws: Workspace) -> str:
    errors = ws.analysis.weight_error_per_head(ws.kept()).tolist()
    cells = " | ".join(f"{e:.4f}" for e in errors)
    heads = " | ".join(f"KV head {h}" for h in range(len(errors)))
    return (f"Per KV head, ‖W − W_S‖/‖W‖ of the current kept set "
            f"(methods in the curves: {ws.request.method}, {', '.join(CURVE_METHODS)}):\n\n"
            f"| {heads} |\n|{'---|' * len(errors)}\n| {cells} |")


def _same_image(image, example: dict) -> bool:
    """Whether ``image`` is the example's picture (so its evidence boxes apply)."""
    from PIL import Image

    with Image.open(example["path"]) as shipped:
        return shipped.size == image.size and np.array_equal(np.asarray(shipped.convert("RGB")), np.asarray(image))
