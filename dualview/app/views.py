"""Presenters: the figures and texts of one :class:`~dualview.app.state.AppState`.

Each function builds one view from the state (through :mod:`dualview.figures` or as Markdown /
plain data); nothing here computes the method's quantities (those come from the analysis and the
state) or knows about Gradio components.
"""

from __future__ import annotations

import math
import shlex

import numpy as np

import dualview
from dualview import figures
from dualview.answers import same_answer
from dualview.app.state import CURVE_METHODS, AppState
from dualview.figures.picker import preprocessing_note
from dualview.methods import get_method


def _hover_numbers(state: AppState) -> dict:
    a = state.analysis
    return {"κ(q_T,k) logit": a.kernel_logit.numpy(), "‖v‖": a.value_norm.numpy(),
            "magnitude": a.magnitude_for(state.query).numpy(), "duplication": a.token_duplication.numpy()}


def magnitude_figure(state: AppState):
    def make():
        return figures.token_map(state.layout, state.analysis.magnitude_for(state.query).numpy(),
                                 image=state.display_image, title=f"Magnitude P = κ(q_T,k)·‖v‖ (q_T: {state.query})",
                                 hover=_hover_numbers(state), colorscale="Inferno", colorbar_title="P",
                                 selected=state.selected, evidence=state.evidence_boxes())

    return state.figure(("magnitude", state.query, state.selected), make)


def duplication_figure(state: AppState):
    return figures.token_map(state.layout, state.analysis.token_duplication.numpy(), image=state.display_image,
                             title="Duplication (top-8 mean S̄²)", hover=_hover_numbers(state),
                             colorscale="Viridis", zmin=0.0, zmax=1.0, colorbar_title="S̄²", selected=state.selected)


def kept_figure(state: AppState):
    kept = state.kept()
    return figures.kept_map(state.layout, state.rounds(), image=state.display_image,
                            hover={"magnitude": state.analysis.magnitude_for(state.query).numpy()},
                            title=f"Kept: {len(kept)} / {state.num_visual} ({state.request.method})",
                            num_rounds=len(state.selection.chunks),
                            selected=state.selected, evidence=state.evidence_boxes(),
                            forced={"keep": state.forced_keep, "drop": state.forced_drop})


def row_figure(state: AppState):
    token = state.selected
    row = state.analysis.duplication_row(token).numpy()
    others = row[np.arange(row.size) != token]
    top = float(others.max()) if others.size and others.max() > 0 else 1.0  # the token itself (1) would flatten the scale
    return figures.token_map(state.layout, row, image=state.display_image, hover={"S̄² with selected": row},
                             title=f"Which patches duplicate token {token}: row {token} of S̄² (scale without itself)",
                             colorscale="Viridis", zmin=0.0, zmax=top, colorbar_title="S̄²", selected=token)


def step_figure(state: AppState, which: str, step: int = 0):
    """The ``"pcmmr"`` or ``"classic"`` selection animation, shown at ``step``: every step in one
    figure (the browser steps and plays it without calling the server). PC-MMR carries each
    round's scores; classic MMR (one step per kept token) its first step's scores only."""
    selection = state.trace(which)
    return figures.selection_animation(
        state.layout, [c.tolist() for c in selection.chunks], [s.numpy() for s in selection.scores],
        selection.floored, step=step, image=state.display_image,
        label="PC-MMR" if which == "pcmmr" else "classic MMR", per_step_scores=which == "pcmmr")


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
    numbers = state.analysis.token_numbers(token, state.query)
    scores = state.trace("pcmmr").scores
    last = float(scores[-1][token]) if scores else float("nan")
    numbers.update({"round": int(state.rounds()[token]), "penalised_score": None if math.isnan(last) else last})
    return numbers


def teaching_text(state: AppState) -> str:
    n = token_numbers(state, state.selected)
    r = state.request
    pcmmr_params = ", ".join(f"{p.title}={state.params['iwp'][p.name]}" if p.is_choice else
                             f"{p.title}={state.params['iwp'][p.name]:g}" for p in get_method("iwp").params)
    debug = state.debug_measures()
    rounds = len(state.selection.chunks)
    if state.selected in state.forced_keep:
        kept_text = "kept because you forced it"
    elif state.selected in state.forced_drop:
        kept_text = "dropped because you forced it"
    elif n["round"] >= 0:
        kept_text = f"kept in round {n['round'] + 1} of {rounds} (step {n['round']} on the 0-based step slider)"
    else:
        kept_text = "dropped"
    score = "—" if n["penalised_score"] is None else f"{n['penalised_score']:.3g}"
    return "\n".join([
        f"**Token {n['token']}** of {state.num_visual} (click a patch in *Pick a patch* to change it); "
        f"layer {state.analysis.layer}, method {r.method}, {kept_text}.",
        "",
        "1. Attention is an implicit linear layer: $\\mathrm{out}(q)=\\eta(q)\\,\\varphi(q)\\,W,\\;"
        "W=\\sum_i \\Delta W_i,\\;\\Delta W_i=\\varphi(k_i)^\\top v_i$; here "
        f"$\\log\\lVert\\Delta W_{{{n['token']}}}\\rVert_F = \\tfrac12 k_i\\!\\cdot\\!k_i/\\sqrt d+\\log\\lVert v_i\\rVert"
        f" = {n['update_norm_log']:.3f}$ (mean over heads).",
        *magnitude_lines(n),
        "3. Information duplication: $\\bar S^2_{ij}=\\mathrm{mean}_h\\big(\\cos(v_i,v_j)\\,"
        "e^{-\\lVert k_i-k_j\\rVert^2/2\\sqrt d}\\big)^2$; its closest duplicate is token "
        f"{n['partner']} with $\\bar S^2={n['partner_duplication']:.3f}$; mean of its 8 largest: "
        f"{n['token_duplication']:.3f}.",
        f"4. PC-MMR ({pcmmr_params}): after each chunk L, "
        "$P_i\\leftarrow P_i\\cdot\\max(0.01,\\,1-\\lambda\\max_{j\\in L}\\bar S^2_{ij})$; "
        f"this token's score in the last round: {score}. Error of the kept set: "
        f"$\\lVert W-W_S\\rVert/\\lVert W\\rVert = {state.measures()['weight_error']:.4f}$.",
        "5. (ours, method.md §8) The weight is not all: softmax renormalises what is kept, "
        "$A-A_S=\\eta\\,\\varphi(q)(W-W_S)-(1-m)A_S$ with kept attention mass "
        f"$m={debug['kept_mass']:.3f}$ for the {debug['query']} queries: dropped updates "
        f"{debug['dropped_part']:.4f}, normaliser {debug['normaliser_part']:.4f} (of $\\lVert A\\rVert$); "
        "see *Debug the answer*.",
    ])


def magnitude_lines(n: dict) -> list[str]:
    """Step 2 of the teaching panel: P_i and, per query head, every number that recomputes it by
    hand (method.md §2; ``n`` is :meth:`~dualview.engine.analysis.Analysis.token_numbers`)."""
    rows = [f"| {h['head']} | {h['kv_head']} | {h['logit']:.4f} | {h['shift']:.4f} | {h['kernel']:.5g} | "
            f"{h['value_norm']:.5g} | {h['product']:.5g} |" for h in n["per_head"]]
    return [
        "2. Information magnitude: $P_i=\\kappa(q_T,k_i)\\,\\lVert v_i\\rVert$, with $q_T$ the mean query of the "
        f"`{n['query']}` rows, computed per query head $h$ in log space and shifted so that the head's largest is 1: "
        "$P^h_i=\\exp(q_T\\!\\cdot\\!k_i/\\sqrt d-c_h)\\,\\lVert v_i\\rVert_h$ with "
        "$c_h=\\max_j\\big(q_T\\!\\cdot\\!k_j/\\sqrt d+\\log\\lVert v_j\\rVert_h\\big)$ over the visual tokens; "
        f"then $P_i=\\mathrm{{mean}}_h P^h_i={n['magnitude']:.5g}$. (The hover's means over heads, "
        f"$q_T\\!\\cdot\\!k_i/\\sqrt d={n['kernel_logit']:.3f}$ and $\\lVert v_i\\rVert={n['value_norm']:.3f}$, do not "
        "give $P_i$: the shift differs per head.)",
        "",
        "| head | KV head | q_T·k_i/√d | shift c_h | exp(q_T·k_i/√d − c_h) | ‖v_i‖ of the KV head | product P^h_i |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        f"| **mean** | | | | | | **{n['magnitude']:.5g}** |",
        "",
    ]


def answers_text(state: AppState) -> str:
    ans = state.derived.answers
    if ans is None:
        return "*Answers appear here after Run.*"
    if not state.answers_current():
        return changed_text(state) + ("*The kept set changed: a budget, method or parameter move answers by itself (being computed); "
                                     "after forcing patches press **Re-answer**.*")
    agree = "the answers **agree**" if ans.agree else "**the answers differ**"
    lines = [
        changed_text(state) + "| | full (all tokens) | pruned |",
        "|---|---|---|",
        f"| answer | **{ans.full_text or '∅'}** | **{ans.pruned_text or '∅'}** |",
        f"| tokens after the pruning layer | {ans.prompt_tokens} | {ans.kept_tokens} |",
        f"| prefill time (one run each, not a benchmark) | {ans.full_prefill * 1000:.1f} ms | "
        f"{ans.pruned_prefill * 1000:.1f} ms |",
        f"| log p(full answer) | {ans.full_logprob:.3f} | {ans.pruned_logprob:.3f} |",
        "",
        f"{agree}; log-probability drop of the full answer: **{ans.full_logprob - ans.pruned_logprob:.3f}** nats.",
    ]
    if state.example:
        truth = state.example.get("answer")
        lines.append(f"\nGround truth of this example: **{truth}** (full answer "
                     f"{'right' if same_answer(ans.full_text, truth) else 'wrong'}, pruned answer "
                     f"{'right' if same_answer(ans.pruned_text, truth) else 'wrong'}).")
        evidence = state.evidence_tokens()
        if evidence:
            kept_evidence = sorted(set(evidence) & set(state.kept()))
            if not kept_evidence:
                lines.append(f"\n**Warning: the kept set dropped every patch of the evidence** "
                             f"({len(evidence)} patches cover the objects the question is about).")
            else:
                lines.append(f"\nEvidence recall: {len(kept_evidence)} of its {len(evidence)} patches are kept "
                             f"(**{state.evidence_recall():.2f}**).")
    return "\n".join(lines)


RUN_INPUTS = {"image": "image", "prompt": "prompt", "model": "model", "layer": "pruning layer"}
"""The inputs only Run applies, as the stale notices name them."""


def changed_text(state: AppState) -> str:
    """The stale notice when Run inputs changed on the page since this analysis ('' otherwise)."""
    if not state.changed:
        return ""
    names = [RUN_INPUTS[name] for name in state.changed]
    which = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (f"**Stale: the {which} changed since the last Run.** Every view still shows the analysed image and "
            f"prompt “{state.request.prompt}” (model {state.model_name}, layer {state.analysis.layer}); "
            "press **Run** to update them.\n\n")


def _made_for(state: AppState, made_for: tuple | None, what: str, button: str) -> str:
    """The caption of a view made on demand: what it shows, or that it no longer matches."""
    if made_for is None:
        return f"*Press {button} to make it for the current budget.*"
    budget = made_for[0]
    if state.changed:
        return f"**Stale:** {what} at {budget} tokens for the previous inputs; press **Run**, then {button}."
    if made_for != state.choice_key():
        now = f"the budget is now {state.budget}" if budget != state.budget else "the method parameters changed"
        return f"**Stale:** {what} at {budget} tokens; {now}: press {button} to update."
    return f"{what} at {budget} of {state.num_visual} tokens (current)."


def compare_note(state: AppState) -> str:
    return _made_for(state, state.derived.compared_for, "Kept masks", "*Compare kept masks*")


def table_note(state: AppState) -> str:
    return _made_for(state, state.derived.method_answers_for, "Every method's answers",
                     "*Answer with every method at this budget*")


def status_text(state: AppState) -> str:
    m = state.measures()
    forced = ""
    if state.forced_keep or state.forced_drop:
        forced = f" (forced: +{len(state.forced_keep)} / −{len(state.forced_drop)})"
    return (changed_text(state) + f"**{state.request.method}** keeps **{len(state.kept())}** of {state.num_visual} visual tokens{forced} "
            f"({100 * len(state.kept()) / state.num_visual:.1f} %) · ‖W−W_S‖/‖W‖ = {m['weight_error']:.4f} · "
            f"effective rank {m['effective_rank']:.2f} · visual part only: {m['visual_weight_error']:.4f}, "
            f"rank {m['visual_effective_rank']:.2f} · attention-output error {m['attention_error']:.4f} · "
            f"prunes from layer {state.prune_layer} of {state.analysis.num_layers} (measures at layer {state.analysis.layer}) · “{state.request.prompt}”"
            + (f"\n\n**Note:** {note}" if (note := preprocessing_note(state.layout)) else ""))


def error_status(sentence: str, state: AppState | None) -> str:
    """The status after a refused event: the sentence, then the unchanged status of ``state`` (the
    analysis every view still shows), or a hint when there is none yet."""
    shown = status_text(state) if state is not None else "Nothing analysed yet: pick an example or press **Run**."
    return f"**Not done:** {sentence} The views below are unchanged.\n\n{shown}"


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
        "answers": state.derived.answers.to_dict() if state.derived.answers and state.answers_current() else None,
        "answers_stale": state.derived.answers is not None and not state.answers_current(),
        "selected_token": token_numbers(state, state.selected),
    }


def _finite(values) -> list:
    return [None if not math.isfinite(float(v)) else round(float(v), 6) for v in values]


def export_payload(state: AppState, image: str | None = None) -> dict:
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
        "cli": cli_command(state, image),
    })
    return payload


def cli_command(state: AppState, image: str | None = None) -> str:
    """The CLI call that reproduces this view's kept set (forced patches included), measures and
    answers (``python -m dualview answer``); ``image``: the exported picture's file name, to be run in
    the folder the export is saved to (default: the example's file, else a placeholder ``IMAGE.png``)."""
    from dualview.app.state import MAX_NEW_TOKENS

    r = state.request
    image = image or (state.example["path"] if state.example else "IMAGE.png")
    parts = ["python", "-m", "dualview", "answer", "--model", state.model_name, "--image", image,
             "--prompt", r.prompt, "--method", r.method, "--budget", str(r.budget), "--layer", str(state.analysis.layer),
             "--max-new-tokens", str(MAX_NEW_TOKENS)]
    for flag, tokens in (("--force-keep", state.forced_keep), ("--force-drop", state.forced_drop)):
        if tokens:
            parts += [flag, ",".join(str(t) for t in tokens)]
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


# --- debugging a pruned answer (issue 18; method.md §8) -------------------------------------------


def attention_figure(state: AppState):
    """Attention each visual token receives from the chosen query rows at the pruning layer."""
    def make():
        received = state.analysis.attention_received_by(state.query)  # [H, Nv]
        heads = {f"head {h}": received[h].numpy() for h in range(received.shape[0])}
        return figures.token_map(state.layout, received.mean(0).numpy(), image=state.display_image,
                                 title=f"Attention received from q ({state.query}), layer {state.analysis.layer}, "
                                       "mean over heads", hover=heads, colorscale="Cividis", colorbar_title="a")

    return state.figure(("attention", state.query), make)


def update_share_figure(state: AppState):
    """Each token's ‖ΔW_i‖ share of ‖W‖: where one update dominates the implicit weight."""
    share = state.analysis.update_share()  # [Hkv, Nv]
    return figures.token_map(state.layout, share.mean(0).numpy(), image=state.display_image,
                             title="Update share ‖ΔW_i‖ / ‖W‖, mean over KV heads",
                             hover={f"KV head {h}": share[h].numpy() for h in range(share.shape[0])},
                             colorscale="Magma", colorbar_title="share")


def debug_text(state: AppState) -> str:
    """Kept attention mass and the exact split of the output change, per head (method.md §8.2-8.3)."""
    d = state.debug_measures()
    heads = len(d["per_head"]["kept_mass"])
    header = "| | " + " | ".join(f"head {h}" for h in range(heads)) + " | mean |"
    rows = [header, "|---|" + "---:|" * (heads + 1)]
    for key, label in (("kept_mass", "kept mass m"), ("dropped_part", "dropped updates ‖η φ(q)(W−W_S)‖/‖A‖"),
                       ("normaliser_part", "normaliser ‖(1−m)A_S‖/‖A‖"), ("output_error", "output change ‖A−A_S‖/‖A‖")):
        rows.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in d["per_head"][key]) + f" | **{d[key]:.4f}** |")
    tokens = " ".join(f"`{i}:{t.strip() or '␠'}`" for i, t in enumerate(state.prompt_tokens))
    return "\n".join([
        f"**Query rows** `{d['query']}` (sequence positions {d['query_positions'][:12]}"
        f"{' …' if len(d['query_positions']) > 12 else ''}). Choose `text` (the paper's mean of the instruction "
        "tokens), `last` (the token that predicts the answer), `all` or `token:i` in *Method parameters*; "
        f"the prompt's tokens: {tokens}.", "",
        "Dropping tokens changes the attention output in two ways that add up exactly: the dropped updates "
        "under the full normaliser, and the renormalisation of the kept ones "
        "($A-A_S=\\eta\\sum_{j\\notin S}\\kappa(q,k_j)v_j-(1-m)A_S$, $m=\\sum_{j\\in S}\\kappa/\\sum_j\\kappa$; "
        "method.md §8).", "", *rows])


def restore_text(state: AppState) -> str:
    if state.derived.restoration is None:
        return "*Press the button to search which dropped tokens bring the full answer back.*"
    kept, layer, r = state.derived.restoration
    if not r.changed:
        return (f"The kept set ({len(kept)} tokens, layer {layer}) does not change the full answer: nothing to bring "
                f"back (log p {r.pruned_logprob:.3f} vs {r.full_logprob:.3f} with every token).")
    verdict = "the full answer is back" if r.restored else "the full answer is **not** back yet"
    return (f"Added back {len(r.order)} dropped token(s) in {r.calls} forward passes: {verdict}; log p of the full "
            f"answer {r.curve[0]:.3f} → {r.curve[-1]:.3f} (every token: {r.full_logprob:.3f}). Order of return: "
            f"{r.order[:20]}{' …' if len(r.order) > 20 else ''}. The map beside it is the {r.first_order.LABEL}.")


def restore_figure(state: AppState):
    """The dropped tokens the search added back, coloured by their order of return."""
    if state.derived.restoration is None:
        return None
    _, _, r = state.derived.restoration
    order = [float("nan")] * state.num_visual
    for rank, token in enumerate(r.order):
        order[token] = rank + 1
    return figures.token_map(state.layout, order, image=state.display_image, title="Order of return (1 = first)",
                             colorscale="Plasma", colorbar_title="order")


def first_order_figure(state: AppState):
    if state.derived.restoration is None:
        return None
    _, _, r = state.derived.restoration
    return figures.token_map(state.layout, r.first_order.effect.numpy(), image=state.display_image,
                             title="First-order effect on log p (zeroing the hidden state, gradient × input)",
                             colorscale="RdBu", colorbar_title="nats")


def restore_curve_figure(state: AppState):
    if state.derived.restoration is None:
        return None
    import plotly.graph_objects as go

    _, _, r = state.derived.restoration
    fig = go.Figure(go.Scatter(x=list(range(len(r.curve))), y=r.curve, mode="lines+markers", name="log p"))
    fig.add_hline(y=r.full_logprob, line_dash="dot", annotation_text="every token")
    fig.update_layout(title="log p(full answer) vs tokens added back", xaxis_title="tokens added back",
                      yaxis_title="log p (nats)", height=300, margin=dict(l=40, r=10, t=40, b=40))
    return fig
