"""Self-contained HTML animation of a selection: works offline, plotly.js inlined (compressed)."""

from __future__ import annotations

import base64
import gzip
import html

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from dualview.figures.maps import STEP_JS

__all__ = ["animation_html"]

FRAME_MS = 700
_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>%(title)s</title></head>
<body style="margin:0">
<div id="dv-animation" style="width:100%%;height:600px"></div>
<script id="dv-figure" type="application/json">%(figure)s</script>
<script>
(async () => {
  // plotly.js, gzip-compressed and inlined (no network): unpacked by the browser's DecompressionStream
  const packed = Uint8Array.from(atob("%(plotly)s"), (c) => c.charCodeAt(0));
  const source = await new Response(new Blob([packed]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
  (0, eval)(source);
  const figure = JSON.parse(document.getElementById("dv-figure").textContent);
  const gd = document.getElementById("dv-animation");
  await Plotly.newPlot(gd, figure.data, figure.layout, {responsive: true});
  const show = %(step)s;
  const count = gd.layout.meta.dv_anim.steps.length;
  let current = 0, timer = null;
  const go = (k) => { current = k; show(gd, k); };
  gd.on("plotly_sliderchange", (e) => { const k = Number(e.step.label) - 1; if (k !== current) go(k); });
  gd.on("plotly_buttonclicked", (e) => {
    if (e.button.label === "Play" && timer === null) timer = setInterval(() => go((current + 1) %% count), %(frame_ms)d);
    if (e.button.label === "Pause") { clearInterval(timer); timer = null; }
  });
})();
</script>
</body></html>
"""


def animation_html(animation: go.Figure, title: str = "dualview selection") -> str:
    """One HTML page that plays ``animation`` (a :func:`dualview.figures.maps.selection_animation`,
    shown from its first step) with Play / Pause buttons and a step slider, offline.

    The page holds the figure once (what each step changes is in it) and plotly.js gzip-compressed
    (about 2 MB instead of 4.8 MB), unpacked by the browser (``DecompressionStream``: Chrome 80,
    Firefox 113, Safari 16.4 or later); the steps are applied by
    :data:`~dualview.figures.maps.STEP_JS`, as in the app. ValueError for a figure without steps."""
    steps = (animation.layout.meta or {}).get("dv_anim", {}).get("steps")
    if not steps:
        raise ValueError("an animation needs a figure made by selection_animation, with at least one step")
    page = go.Figure(animation)
    page.update_layout(
        title_text=steps[0]["title"], autosize=True,
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.02, xanchor="left", yanchor="top",
                          buttons=[dict(label=label, method="skip") for label in ("Play", "Pause")])],
        sliders=[dict(active=0, x=0.15, len=0.85, y=-0.02, currentvalue=dict(prefix="round "),
                      steps=[dict(label=str(i + 1), method="skip") for i in range(len(steps))])],
        margin=dict(b=90),
    )
    packed = base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), 9, mtime=0)).decode("ascii")
    return _PAGE % {"title": html.escape(title), "figure": page.to_json().replace("</", "<\\/"), "plotly": packed,
                    "step": STEP_JS, "frame_ms": FRAME_MS}
