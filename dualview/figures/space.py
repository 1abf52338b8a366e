"""Token space: a 2-D PCA projection of the visual tokens' keys or values."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from dualview.figures.maps import FORCED_KEEP_COLOR, FORCED_KEEP_ROUND, round_colors

__all__ = ["project_2d", "token_space"]


def project_2d(features) -> np.ndarray:
    """PCA of ``features [Nv, D]`` (e.g. keys or values, heads concatenated) -> ``[Nv, 2]``.

    Deterministic (full SVD solver); with fewer than two informative directions the missing
    coordinate is zero (all zeros for identical tokens).
    """
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    components = min(2, x.shape[0], x.shape[1])
    out = np.zeros((x.shape[0], 2))
    if components and np.ptp(x, axis=0).any():
        out[:, :components] = PCA(n_components=components, svd_solver="full").fit_transform(x)
    return out


def token_space(points, rounds, *, title: str = "", selected: int | None = None,
                hover: dict | None = None, num_rounds: int | None = None) -> go.Figure:
    """Scatter of the projected tokens: dropped ones grey, kept ones coloured by round.

    Args:
        points: ``[Nv, 2]`` (from :func:`project_2d`); rounds: ``[Nv]`` round per kept token, −1
            dropped, ``FORCED_KEEP_ROUND`` kept only because the user forced it; selected: a token to ring; hover: name -> ``[Nv]`` numbers for the hover text.
    """
    points = np.asarray(points, dtype=float)
    rounds = np.asarray(rounds, dtype=int).reshape(-1)
    n = rounds.size
    names = list(hover or {})
    custom = np.stack([np.arange(n, dtype=float), rounds + 1.0] + [np.asarray(hover[k], dtype=float) for k in names], 1)
    template = "token %{customdata[0]:.0f} · round %{customdata[1]:.0f}" + "".join(
        f"<br>{k} = %{{customdata[{i + 2}]:.4g}}" for i, k in enumerate(names)) + "<extra></extra>"
    fig = go.Figure()
    dropped = rounds == -1
    fig.add_trace(go.Scatter(x=points[dropped, 0], y=points[dropped, 1], mode="markers", name="dropped",
                             marker=dict(color="#bbbbbb", size=6), customdata=custom[dropped],
                             hovertemplate=template))
    colors = round_colors(num_rounds or (int(rounds.max()) + 1 if rounds.max() >= 0 else 1))
    for r, color in enumerate(colors):
        mine = rounds == r
        if mine.any():
            fig.add_trace(go.Scatter(x=points[mine, 0], y=points[mine, 1], mode="markers", name=f"round {r + 1}",
                                     marker=dict(color=color, size=9, line=dict(color="black", width=0.5)),
                                     customdata=custom[mine], hovertemplate=template))
    forced = rounds == FORCED_KEEP_ROUND
    if forced.any():
        fig.add_trace(go.Scatter(x=points[forced, 0], y=points[forced, 1], mode="markers", name="forced keep",
                                 marker=dict(color=FORCED_KEEP_COLOR, size=9, line=dict(color="black", width=0.5)),
                                 customdata=custom[forced], hovertemplate=template.replace(
                                     "round %{customdata[1]:.0f}", "kept: forced by you")))
    if selected is not None:
        fig.add_trace(go.Scatter(x=[points[selected, 0]], y=[points[selected, 1]], mode="markers",
                                 name=f"token {selected}", hoverinfo="skip",
                                 marker=dict(size=18, color="rgba(0,0,0,0)", line=dict(color="#ff2bd6", width=3))))
    # for linked hovering in the app (dualview/app/linking.js): token ids per trace, each token's point
    ids = [np.nonzero(dropped)[0].tolist()] + [np.nonzero(rounds == r)[0].tolist()
                                               for r in range(len(colors)) if (rounds == r).any()]
    ids += [np.nonzero(forced)[0].tolist()] if forced.any() else []
    fig.update_layout(meta=dict(dv_ids=ids, dv_points=np.round(points, 5).tolist()))
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=14)), height=380,
                      margin=dict(l=30, r=10, t=36, b=30), plot_bgcolor="white", paper_bgcolor="white",
                      xaxis=dict(title="PC 1", gridcolor="#eee"), yaxis=dict(title="PC 2", gridcolor="#eee"))
    return fig
