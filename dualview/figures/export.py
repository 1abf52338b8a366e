"""Self-contained HTML animation of a selection (plotly.js inlined, works offline)."""

from __future__ import annotations

import plotly.graph_objects as go

from dualview.figures.maps import STEP_JS

__all__ = ["animation_html"]

FRAME_MS = 700
_CONTROLS = """
const gd = document.getElementById('{plot_id}');
const show = %s;
const count = gd.layout.meta.dv_anim.steps.length;
let current = gd.layout.sliders[0].active || 0, timer = null;
const go = (k) => { current = k; show(gd, k); };
gd.on('plotly_sliderchange', (e) => { const k = Number(e.step.label) - 1; if (k !== current) go(k); });
gd.on('plotly_buttonclicked', (e) => {
  if (e.button.label === 'Play' && timer === null) timer = setInterval(() => go((current + 1) %% count), %d);
  if (e.button.label === 'Pause') { clearInterval(timer); timer = null; }
});
""" % (STEP_JS, FRAME_MS)


def animation_html(animation: go.Figure, title: str = "dualview selection") -> str:
    """One HTML page that plays ``animation`` (a :func:`dualview.figures.maps.selection_animation`)
    with Play / Pause buttons and a step slider: the figure once plus what each step changes, the
    steps applied by :data:`~dualview.figures.maps.STEP_JS` in the page (no plotly frames)."""
    steps = (animation.layout.meta or {}).get("dv_anim", {}).get("steps")
    if not steps:
        raise ValueError("an animation needs a figure made by selection_animation, with at least one step")
    page = go.Figure(animation)
    skip = [dict(label=label, method="skip") for label in ("Play", "Pause")]
    page.update_layout(
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.02, xanchor="left", yanchor="top", buttons=skip)],
        sliders=[dict(active=0, x=0.15, len=0.85, y=-0.02, currentvalue=dict(prefix="round "),
                      steps=[dict(label=str(i + 1), method="skip") for i in range(len(steps))])],
        margin=dict(b=90),
    )
    return page.to_html(include_plotlyjs=True, full_html=True, default_height="600px",
                        post_script=_CONTROLS).replace("<head>", f"<head><title>{title}</title>", 1)
