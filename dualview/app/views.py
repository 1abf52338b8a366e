"""Presenters: the figures and texts of one :class:`~dualview.app.state.AppState`.

Each function builds one view from the state (through :mod:`dualview.figures` or as Markdown /
plain data); nothing here computes the method's quantities (those come from the analysis and the
state) or knows about Gradio components.
"""

from __future__ import annotations

import math
import shlex

import dualview
from dualview import figures
from dualview.app.state import CURVE_METHODS, AppState
from dualview.methods import get_method


def _hover_numbers(state: AppState) -> dict:
    a = state.analysis
    return {"κ(q_T,k) logit": a.kernel_logit.numpy(), "‖v‖": a.value_norm.numpy(),
            "magnitude": a.magnitude.numpy(), "duplication": a.token_duplication.numpy()}


def magnitude_figure(state: AppState):
    return figures.token_map(state.layout, state.analysis.magnitude.numpy(), image=state.display_image,
                             title="Magnitude P = κ(q_T,k)·‖v‖", hover=_hover_numbers(state),
                             colorscale="Inferno", colorbar_title="P", selected=state.selected,
                             evidence=state.evidence_boxes())


def duplication_figure(state: AppState):
    return figures.token_map(state.layout, state.analysis.token_duplication.numpy(), image=state.display_image,
                             title="Duplication (top-8 mean S̄²)", hover=_hover_numbers(state),
                             colorscale="Viridis", zmin=0.0, zmax=1.0, colorbar_title="S̄²", selected=state.selected)


def kept_figure(state: AppState):
    kept = state.kept()
    return figures.kept_map(state.layout, state.rounds(), image=state.display_image, hover=_hover_numbers(state),
                            title=f"Kept: {len(kept)} / {state.num_visual} ({state.request.method})",
                            num_rounds=len(state.selection.chunks) + (1 if state.forced_keep else 0),
                            selected=state.selected, evidence=state.evidence_boxes(),
                            forced={"keep": state.forced_keep, "drop": state.forced_drop})


def row_figure(state: AppState):
    token = state.selected
    row = state.analysis.duplication_row(token).numpy()
    return figures.token_map(state.layout, row, image=state.display_image, hover={"S̄² with selected": row},
                             title=f"Which patches duplicate token {token}: row {token} of S̄²",
                             colorscale="Viridis", zmin=0.0, zmax=1.0, colorbar_title="S̄²", selected=token)


def step_figure(state: AppState, which: str, step: int):
    selection = state.trace(which)
    return figures.selection_step(
        state.layout, [c.tolist() for c in selection.chunks], [s.numpy() for s in selection.scores],
        selection.floored, step, image=state.display_image,
        label="PC-MMR" if which == "pcmmr" else "classic MMR", log_scores=which == "pcmmr")


def steps_of(state: AppState, which: str) -> int:
    return len(state.trace(which).chunks)


def curves_figure(state: AppState, with_oracle: bool):
    return figures.error_curves(state.curve_budgets(), state.curves(with_oracle), current=len(state.kept()),
                                num_visual=state.num_visual, highlight=state.request.method)


def space_figure(state: AppState):
    kind = state.space_kind
    rounds = state.rounds()
    return figures.token_space(state.projection(kind), rounds, selected=state.selected,
                               title=f"PCA of the visual tokens' {kind} at layer {state.analysis.layer}",
                               hover={"magnitude": state.analysis.magnitude.numpy()},
                               num_rounds=int(rounds.max()) + 1 if rounds.max() >= 0 else 1)


def token_numbers(state: AppState, token: int) -> dict:
    """The analysis's dual-form numbers of ``token`` plus its round and its last PC-MMR score."""
    numbers = state.analysis.token_numbers(token)
    scores = state.trace("pcmmr").scores
    last = float(scores[-1][token]) if scores else float("nan")
    numbers.update({"round": int(state.rounds()[token]), "penalised_score": None if math.isnan(last) else last})
    return numbers


def teaching_text(state: AppState) -> str:
    n = token_numbers(state, state.selected)
    r = state.request
    pcmmr_params = ", ".join(f"{p.title}={state.params['iwp'][p.name]:g}" for p in get_method("iwp").params)
    kept_text = (f"kept in round {n['round'] + 1}" if n["round"] >= 0 else "dropped")
    score = "—" if n["penalised_score"] is None else f"{n['penalised_score']:.3g}"
    return "\n".join([
        f"**Token {n['token']}** of {state.num_visual} (click a patch in *Pick a patch* to change it); "
        f"layer {state.analysis.layer}, method {r.method}, {kept_text}.",
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
        f"4. PC-MMR ({pcmmr_params}): after each chunk L, "
        "$P_i\\leftarrow P_i\\cdot\\max(0.01,\\,1-\\lambda\\max_{j\\in L}\\bar S^2_{ij})$; "
        f"this token's score in the last round: {score}. Error of the kept set: "
        f"$\\lVert W-W_S\\rVert/\\lVert W\\rVert = {state.measures()['weight_error']:.4f}$.",
    ])


def answers_text(state: AppState) -> str:
    ans = state.derived.answers
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
    if state.example:
        truth = state.example.get("answer")
        lines.append(f"\nGround truth of this example: **{truth}** (full answer "
                     f"{'right' if ans.full_text.strip().lower() == str(truth).lower() else 'wrong'}, pruned answer "
                     f"{'right' if ans.pruned_text.strip().lower() == str(truth).lower() else 'wrong'}).")
        evidence = state.evidence_tokens()
        if evidence:
            kept_evidence = sorted(set(evidence) & set(state.kept()))
            if not kept_evidence:
                lines.append(f"\n⚠️ **The kept set dropped every patch of the evidence** "
                             f"({len(evidence)} patches cover the objects the question is about).")
            else:
                lines.append(f"\nEvidence: {len(kept_evidence)} of its {len(evidence)} patches are kept.")
    return "\n".join(lines)


def status_text(state: AppState) -> str:
    m = state.measures()
    forced = ""
    if state.forced_keep or state.forced_drop:
        forced = f" (forced: +{len(state.forced_keep)} / −{len(state.forced_drop)})"
    return (f"**{state.request.method}** keeps **{len(state.kept())}** of {state.num_visual} visual tokens{forced} "
            f"({100 * len(state.kept()) / state.num_visual:.1f} %) · ‖W−W_S‖/‖W‖ = {m['weight_error']:.4f} · "
            f"effective rank {m['effective_rank']:.2f} · visual part only: {m['visual_weight_error']:.4f}, "
            f"rank {m['visual_effective_rank']:.2f} · attention-output error {m['attention_error']:.4f} · "
            f"layer {state.analysis.layer} of {state.analysis.num_layers} · “{state.request.prompt}”"
            + ("" if state.analysis.geometry.spatial else f"\n\n⚠️ {state.analysis.geometry.note}"))


def summary(state: AppState) -> dict:
    """The JSON of what is shown (also the API's content to check)."""
    r = state.request
    kept = state.kept()
    rounds = state.rounds()
    return {
        "dualview_version": dualview.__version__,
        "model": state.model_name,
        "settings": {"prompt": r.prompt, "method": r.method, "budget": r.budget, "layer": state.analysis.layer,
                     "prune_layer": state.prune_layer, "params": r.params,
                     "image_size": list(r.image.size), "example": state.example.get("name") if state.example else None},
        "num_visual": state.num_visual,
        "kept": kept,
        "kept_count": len(kept),
        "rounds": [int(x) for x in rounds],
        "forced_keep": list(state.forced_keep),
        "forced_drop": list(state.forced_drop),
        "measures": state.measures(),
        "pcmmr": {"chunks": [c.tolist() for c in state.trace("pcmmr").chunks],
                  "floored": list(state.trace("pcmmr").floored)},
        "answers": state.derived.answers.to_dict() if state.derived.answers else None,
        "selected_token": token_numbers(state, state.selected),
    }


def _finite(values) -> list:
    return [None if not math.isfinite(float(v)) else round(float(v), 6) for v in values]


def export_payload(state: AppState) -> dict:
    """Everything shown: summary plus per-token scores, per-round scores, layout, curves, tables."""
    a = state.analysis
    payload = summary(state)
    payload.update({
        "layout": state.layout,
        "magnitude": _finite(a.magnitude), "kernel_logit": _finite(a.kernel_logit),
        "value_norm": _finite(a.value_norm), "token_duplication": _finite(a.token_duplication),
        "duplication_row_of_selected": _finite(a.duplication_row(state.selected)),
        "pcmmr_round_scores": [_finite(s) for s in state.trace("pcmmr").scores],
        "classic_mmr": {"kept": state.trace("classic").kept.tolist()},
        "curves": {"budgets": state.curve_budgets(), "methods": state.curves()},
        "method_answers": [dict(zip(("method", "kept", "answer", "agrees", "weight_error", "prefill_s"), row))
                           for row in state.derived.method_answers],
        "evidence_tokens": state.evidence_tokens(),
        "cli": cli_command(state),
    })
    return payload


def cli_command(state: AppState) -> str:
    """The CLI call that reproduces this view's kept set and answers (``python -m dualview answer``)."""
    r = state.request
    image = state.example["path"] if state.example else "IMAGE.png"
    parts = ["python", "-m", "dualview", "answer", "--model", state.model_name, "--image", image,
             "--prompt", r.prompt, "--method", r.method, "--budget", str(r.budget), "--layer", str(state.analysis.layer)]
    for name, value in r.params.items():
        parts += ["--param", f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"]
    return " ".join(shlex.quote(p) for p in parts + ["--json"])


def per_head_text(state: AppState) -> str:
    errors = state.analysis.weight_error_per_head(state.kept()).tolist()
    cells = " | ".join(f"{e:.4f}" for e in errors)
    heads = " | ".join(f"KV head {h}" for h in range(len(errors)))
    return (f"Per KV head, ‖W − W_S‖/‖W‖ of the current kept set "
            f"(methods in the curves: {state.request.method}, {', '.join(CURVE_METHODS)}):\n\n"
            f"| {heads} |\n|{'---|' * len(errors)}\n| {cells} |")
