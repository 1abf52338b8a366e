"""Error-versus-budget curves of the implicit weight's low-rank approximation (method.md §6)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["METRICS", "error_curves"]

METRICS = {
    "weight_error": "‖W − W_S‖ / ‖W‖",
    "effective_rank": "effective rank of W_S",
    "visual_weight_error": "visual part: ‖W_V − W_S∩V‖ / ‖W_V‖",
    "visual_effective_rank": "visual part: effective rank",
    "attention_error": "attention-output error",
    "kept_mass": "kept attention mass m (ours, §8)",
}

_DASH = {"oracle": "dot", "random": "dash"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
"""One colour per method, in the order the curves come (the selected method first), the same in
every panel; the legend names each once."""
COLUMNS = 3


def error_curves(budgets: list[int], curves: dict[str, dict[str, list[float]]], current: int | None = None,
                 num_visual: int | None = None, highlight: str | None = None) -> go.Figure:
    """One panel per metric, one line per method, the current budget marked.

    Args:
        budgets: token counts on the x axis ``[B]``.
        curves: method -> metric name (a key of :data:`METRICS`) -> ``[B]`` values; a method may
            lack a metric (e.g. the oracle is only computed on request).
        current: the budget in use, drawn as a vertical line; num_visual: Nv, for the hover's
            percentage; highlight: the method drawn thicker (the one selected in the app).
    """
    names = [m for m in METRICS if any(m in per for per in curves.values())]
    rows = -(-len(names) // COLUMNS)
    cols = min(COLUMNS, len(names))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[METRICS[m] for m in names],
                        horizontal_spacing=0.08, vertical_spacing=0.22)
    colors = {method: PALETTE[i % len(PALETTE)] for i, method in enumerate(curves)}
    for method, per_metric in curves.items():
        shown = False
        for index, metric in enumerate(names):
            if metric not in per_metric:
                continue
            percent = [100.0 * b / num_visual for b in budgets] if num_visual else budgets
            fig.add_trace(go.Scatter(
                x=budgets, y=per_metric[metric], mode="lines+markers", name=method, legendgroup=method,
                showlegend=not shown, customdata=percent, marker=dict(size=4, color=colors[method]),
                line=dict(width=3.5 if method == highlight else 1.6, dash=_DASH.get(method, "solid"),
                          color=colors[method]),
                hovertemplate=f"{method}<br>%{{x}} tokens (%{{customdata:.1f}} %)<br>%{{y:.4g}}<extra></extra>"),
                row=index // cols + 1, col=index % cols + 1)
            shown = True
    if current is not None:
        for index in range(len(names)):
            fig.add_vline(x=current, line=dict(color="#444", width=1.5, dash="dash"),
                          row=index // cols + 1, col=index % cols + 1)
    fig.update_xaxes(title_text="kept visual tokens")
    fig.update_annotations(font_size=12)
    fig.update_layout(height=300 * rows + 60, margin=dict(l=40, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.12 if rows > 1 else -0.25),
                      plot_bgcolor="white", paper_bgcolor="white")
    fig.update_xaxes(showgrid=True, gridcolor="#eee")
    fig.update_yaxes(showgrid=True, gridcolor="#eee")
    return fig
