"""Self-contained HTML animation of a selection (plotly.js inlined, works offline)."""

from __future__ import annotations

import plotly.graph_objects as go

__all__ = ["animation_html"]


def animation_html(frames: list[go.Figure], title: str = "dualview selection") -> str:
    """One HTML page that plays ``frames`` (figures with identical trace structure, e.g. every
    :func:`dualview.figures.maps.selection_step`) with Play / Pause buttons and a step slider."""
    if not frames:
        raise ValueError("an animation needs at least one frame")
    first = go.Figure(frames[0])
    names = [str(i + 1) for i in range(len(frames))]
    first.frames = [go.Frame(data=f.data, name=name, layout=dict(shapes=f.layout.shapes, title=f.layout.title))
                    for f, name in zip(frames, names)]
    step_args = dict(mode="immediate", frame=dict(duration=700, redraw=True), transition=dict(duration=0))
    first.update_layout(
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.02, xanchor="left", yanchor="top", buttons=[
            dict(label="Play", method="animate", args=[None, dict(step_args, fromcurrent=True)]),
            dict(label="Pause", method="animate", args=[[None], dict(step_args, frame=dict(duration=0))]),
        ])],
        sliders=[dict(active=0, x=0.15, len=0.85, y=-0.02, currentvalue=dict(prefix="round "), steps=[
            dict(label=name, method="animate", args=[[name], step_args]) for name in names])],
        margin=dict(b=90),
    )
    return first.to_html(include_plotlyjs=True, full_html=True, auto_play=False,
                         default_height="600px").replace("<head>", f"<head><title>{title}</title>", 1)
