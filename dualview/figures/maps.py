"""Per-token maps drawn over the image: magnitude, duplication, kept masks, selection rounds.

Every function takes plain results (numbers per visual token) and a token layout, the dict
that ``Geometry.to_dict()`` returns: ``boxes`` ``[Nv][4]`` (x0, y0, x1, y1 in original-image
pixels), ``rows``/``cols`` ``[Nv]`` (the token's cell in its grid), ``view`` ``[Nv]`` (index into
``views``) and ``views`` (``{"name", "rows", "cols"}`` per raster grid). Nothing assumes a
square grid or a single view: each view (e.g. an AnyRes base view and its crops) becomes its own
panel, a heat-map whose cell edges are taken from the token boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from _plotly_utils.utils import to_typed_array_spec
from PIL import Image

from dualview.figures.picker import display_stretch, stretch_caption

__all__ = ["Panel", "panels", "token_map", "kept_map", "selection_animation", "STEP_JS", "compare_kept", "round_colors",
           "display_image", "outlined_tokens"]

DROPPED_COLOR = "rgba(245,245,245,0.82)"
"""Dropped tokens are washed out (light, nearly opaque): kept ones stay legible on dark and light
scenes alike, whatever colour their round has."""
SINGLE_ROUND_COLOR = "rgb(0,200,120)"
FORCED_KEEP_ROUND = -2
"""The round of a token kept only because the user forced it (no round of the method took it)."""
FORCED_KEEP_COLOR = "rgb(255,140,0)"
CHUNK_COLOR = "rgb(0,229,255)"
SELECTED_OUTLINE = "#ff2bd6"
EVIDENCE_OUTLINE = "#39ff14"
DISPLAY_SIDE = 512
"""Longer side of the picture drawn under the maps, in pixels: what a map panel can show."""


def display_image(image: Image.Image, max_side: int = DISPLAY_SIDE, quality: int = 75) -> str:
    """The image as a JPEG data URL of at most ``max_side`` pixels on its longer side: what the
    maps draw underneath (the figures keep the original pixel coordinates; only the picture is
    smaller). Make it once per image and hand the string to every figure."""
    import base64
    import io

    scale = min(1.0, max_side / max(image.size))
    small = image.convert("RGB")
    if scale < 1.0:
        small = small.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Panel:
    """One raster grid of tokens: ``index[r, c]`` is the visual-token index there (−1: empty cell)."""

    name: str
    index: np.ndarray  # [R, C] int
    x_edges: np.ndarray  # [C + 1]
    y_edges: np.ndarray  # [R + 1]

    def grid(self, values) -> np.ndarray:
        """Scatter per-token ``values [Nv, ...]`` onto this panel's ``[R, C, ...]`` float grid (NaN: no token)."""
        values = np.asarray(values, dtype=float)
        out = np.full(self.index.shape + values.shape[1:], np.nan)
        present = self.index >= 0
        out[present] = values[self.index[present]]
        return out


def panels(layout: dict) -> list[Panel]:
    """The raster grids of a token layout, with cell edges read from the token boxes."""
    boxes = np.asarray(layout["boxes"], dtype=float).reshape(-1, 4)
    rows, cols, view = (np.asarray(layout[key], dtype=int) for key in ("rows", "cols", "view"))
    result = []
    for v, spec in enumerate(layout["views"]):
        members = np.nonzero(view == v)[0]
        index = np.full((spec["rows"], spec["cols"]), -1, dtype=int)
        index[rows[members], cols[members]] = members
        x_edges = np.empty(spec["cols"] + 1)
        y_edges = np.empty(spec["rows"] + 1)
        for c in range(spec["cols"]):
            in_col = members[cols[members] == c]
            x_edges[c], x_edges[c + 1] = boxes[in_col, 0].min(), boxes[in_col, 2].max()
        for r in range(spec["rows"]):
            in_row = members[rows[members] == r]
            y_edges[r], y_edges[r + 1] = boxes[in_row, 1].min(), boxes[in_row, 3].max()
        result.append(Panel(spec["name"], index, x_edges, y_edges))
    return result


def _axes(fig: go.Figure, count: int, image, layout: dict) -> list[tuple[str, str]]:
    """Lay out ``count`` side-by-side image panels of ``layout``'s picture; returns their (xaxis,
    yaxis) reference names. The axes keep original-image pixels (hover, outlines and the linked
    boxes read them) and are drawn stretched by ``picker.display_stretch`` (y pixels per unit /
    x pixels per unit = stretch_y / stretch_x), as the picker is.
    ``image``: None, a PIL image (drawn as :func:`display_image`) or a data URL made by it."""
    width, height = layout["image_size"]
    stretch_x, stretch_y = display_stretch(layout)
    if isinstance(image, Image.Image):
        image = display_image(image)
    gap = 0.04
    span = (1.0 - gap * (count - 1)) / count
    refs = []
    for p in range(count):
        suffix = "" if p == 0 else str(p + 1)
        x_name, y_name = "xaxis" + suffix, "yaxis" + suffix
        fig.layout[x_name] = dict(domain=[p * (span + gap), p * (span + gap) + span], range=[0, width],
                                  showgrid=False, zeroline=False, showticklabels=False, constrain="domain")
        fig.layout[y_name] = dict(range=[height, 0], showgrid=False, zeroline=False, showticklabels=False,
                                  scaleanchor="x" + suffix, scaleratio=stretch_y / stretch_x, constrain="domain",
                                  anchor="x" + suffix)
        if image is not None:
            fig.add_layout_image(source=image, xref="x" + suffix, yref="y" + suffix, x=0, y=0,
                                 sizex=width, sizey=height, sizing="stretch", layer="below")
        refs.append(("x" + suffix, "y" + suffix))
    return refs


def _caption(fig: go.Figure, layout: dict) -> None:
    """When the panels are drawn stretched, ``picker.stretch_caption`` under them on two short lines
    (a map is about 200 pixels wide on the page; its title is already full)."""
    if caption := stretch_caption(layout, sep="<br>"):
        fig.update_layout(margin=dict(b=34))
        fig.add_annotation(text=caption, name="stretch", xref="paper", yref="paper", x=0.0, y=0.0, xanchor="left",
                           yanchor="top", yshift=-2, showarrow=False, align="left", font=dict(size=11, color="#555"))


def _hover(hover: dict[str, np.ndarray] | None, n: int) -> tuple[np.ndarray, str]:
    """customdata ``[Nv, 1 + K]`` float32 (token index, then K named numbers; float32 is exact for the
    indices and beyond the 4 digits shown) and its hover template."""
    names = list(hover or {})
    columns = [np.arange(n, dtype=np.float32)] + [np.asarray(hover[name], dtype=np.float32).reshape(n) for name in names]
    template = "token %{customdata[0]:.0f}" + "".join(
        f"<br>{name} = %{{customdata[{i + 1}]:.4g}}" for i, name in enumerate(names))
    return np.stack(columns, axis=1), template + "<extra></extra>"


def outlined_tokens(figure: go.Figure, name: str) -> list[tuple[float, float, float, float]]:
    """The boxes (x0, y0, x1, y1) that the outline traces called ``name`` draw (for tests and export)."""
    boxes = []
    for trace in figure.data:
        if trace.name == name and trace.type == "scatter":
            x, y = np.asarray(trace.x, dtype=float), np.asarray(trace.y, dtype=float)
            for start in range(0, len(x), 6):  # 5 corners, then a gap
                boxes.append((x[start], y[start], x[start + 2], y[start + 2]))
    return boxes


def _outline(boxes: np.ndarray, tokens, color: str, panel_of: np.ndarray, refs, name: str, width=2.5) -> list:
    """Outlines of ``tokens`` (each in the panel its view belongs to): one line trace per panel,
    rectangles separated by gaps, numeric arrays (no per-token shapes)."""
    tokens = np.asarray(list(tokens), dtype=int).reshape(-1)
    traces = []
    for p, (xref, yref) in enumerate(refs):
        mine = tokens[panel_of[tokens] == p]
        if not mine.size:
            continue
        x, y = _outline_xy(boxes, mine)
        traces.append(go.Scatter(x=x, y=y, mode="lines", line=dict(color=color, width=width), name=name,
                                 xaxis=xref, yaxis=yref, hoverinfo="skip", showlegend=False, connectgaps=False))
    return traces


def _base_figure(layout: dict, image: Image.Image | None, title: str, height: int = 380, linked: bool = False):
    """An empty map figure: the panels' axes over the picture, the title, the panel names and the
    stretch caption. ``linked``: ``layout.meta`` also carries each token's box and panel axis
    (``dv_boxes``, ``dv_xref``), what the app's linked hovering reads (only the kept map is linked:
    at 7 209 tokens the boxes are about 0.2 MB a figure)."""
    grids = panels(layout)
    fig = go.Figure()
    refs = _axes(fig, len(grids), image, layout)
    n = len(layout["boxes"])
    panel_of = np.zeros(n, dtype=int)
    for p, grid in enumerate(grids):
        panel_of[grid.index[grid.index >= 0]] = p
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=14)), height=height,
                      margin=dict(l=4, r=4, t=36, b=4), plot_bgcolor="white", paper_bgcolor="white",
                      hoverlabel=dict(font_size=12))
    if linked:  # for linked hovering in the app (dualview/app/linking.js): each token's box and panel
        fig.update_layout(meta=dict(dv_boxes=np.round(np.asarray(layout["boxes"], dtype=float)).astype(int).tolist(),
                                    dv_xref=[refs[p][0] for p in panel_of]))
    if len(grids) > 1:
        for grid, (xref, _) in zip(grids, refs):
            fig.add_annotation(text=grid.name, xref=xref + " domain", yref="paper", x=0.5, y=1.0,
                               showarrow=False, yanchor="bottom", font=dict(size=11))
    _caption(fig, layout)
    return fig, grids, refs, panel_of


def _heat(grid: Panel, values: np.ndarray, custom: np.ndarray, template: str, ref, *, colorscale,
          zmin=None, zmax=None, opacity=0.65, colorbar=None, name="", showscale=True) -> go.Heatmap:
    return go.Heatmap(
        z=grid.grid(values).astype(np.float32), x=grid.x_edges, y=grid.y_edges,
        customdata=grid.grid(custom).astype(np.float32),
        hovertemplate=template, colorscale=colorscale, zmin=zmin, zmax=zmax, opacity=opacity,
        xaxis=ref[0], yaxis=ref[1], showscale=showscale, colorbar=colorbar, name=name, hoverongaps=False,
        xgap=0.5, ygap=0.5)


def token_map(layout: dict, values, *, image: Image.Image | None = None, title: str = "",
              hover: dict | None = None, colorscale: str = "Inferno", zmin=None, zmax=None,
              colorbar_title: str = "", selected: int | None = None, evidence=None) -> go.Figure:
    """A heat-map of one number per visual token over the image.

    Args:
        layout: token layout (``Geometry.to_dict()``); values: ``[Nv]`` numbers (NaN: not drawn).
        image: the original image, drawn underneath; hover: name -> ``[Nv]`` numbers shown on hover
            (the token index is always shown); selected: a token to outline; evidence: boxes
            (x0, y0, x1, y1) to outline, e.g. the objects a question is about.
    """
    values = np.asarray(values, dtype=float).reshape(-1)
    fig, grids, refs, panel_of = _base_figure(layout, image, title)
    custom, template = _hover(hover, values.size)
    finite = values[np.isfinite(values)]
    zmin = float(finite.min()) if zmin is None and finite.size else zmin
    zmax = float(finite.max()) if zmax is None and finite.size else zmax
    for p, (grid, ref) in enumerate(zip(grids, refs)):
        fig.add_trace(_heat(grid, values, custom, template, ref, colorscale=colorscale, zmin=zmin, zmax=zmax,
                            colorbar=dict(title=colorbar_title, thickness=12, len=0.9), showscale=p == 0))
    boxes = np.asarray(layout["boxes"], dtype=float).reshape(-1, 4)
    fig.update_layout(shapes=_evidence_shapes(evidence, refs))
    if selected is not None:
        fig.add_traces(_outline(boxes, [selected], SELECTED_OUTLINE, panel_of, refs, "selected", width=3))
    return fig


def _evidence_shapes(evidence, refs) -> list[dict]:
    return [dict(type="rect", x0=b[0], y0=b[1], x1=b[2], y1=b[3], xref=x, yref=y,
                 line=dict(color=EVIDENCE_OUTLINE, width=2, dash="dot"))
            for b in (evidence or []) for x, y in refs]


def round_colors(count: int) -> list[str]:
    """``count`` distinguishable colours, early rounds dark blue to late rounds yellow (viridis); one
    round (methods without rounds) gets one bright colour."""
    if count == 1:
        return [SINGLE_ROUND_COLOR]
    return [_rgb(_viridis_at(i / (count - 1))) for i in range(count)]


def _discrete_scale(colors: list[str]) -> list[list]:
    """A colorscale mapping integer z = 0..len-1 to ``colors`` in flat bands."""
    count = len(colors)
    scale = []
    for i, color in enumerate(colors):
        scale += [[i / count, color], [(i + 1) / count, color]]
    return scale


def _round_layer(grid, rounds, custom, template, ref, colors, show, title="round"):
    """Kept tokens coloured by the round that took them (NaN elsewhere)."""
    z = np.where(rounds >= 0, rounds, np.nan).astype(float)
    count = max(len(colors), 1)
    return _heat(grid, z, custom, template, ref, colorscale=_discrete_scale(colors), zmin=-0.5, zmax=count - 0.5,
                 opacity=0.8, showscale=show, name="kept", colorbar=_round_colorbar(count, title))


def _round_colorbar(count: int, title: str = "round") -> dict:
    """The colour bar of a layer whose z is the 0-based round: at most 8 ticks, labelled from 1."""
    ticks = list(range(0, count, max(1, math.ceil(count / 8))))
    return dict(title=title, thickness=12, len=0.9, x=1.0, tickvals=ticks, ticktext=[str(r + 1) for r in ticks])


def _dropped_layer(grid, dropped, custom, template, ref):
    z = np.where(dropped, 0.0, np.nan)
    return _heat(grid, z, custom, template, ref, colorscale=[[0, DROPPED_COLOR], [1, DROPPED_COLOR]],
                 opacity=1.0, showscale=False, name="dropped")


def kept_map(layout: dict, rounds, *, image: Image.Image | None = None, title: str = "",
             hover: dict | None = None, num_rounds: int | None = None, selected: int | None = None,
             evidence=None, forced=None) -> go.Figure:
    """The kept mask: kept tokens coloured by the round that took them, dropped tokens washed out
    (the title says so: the legend of the mask).

    Args:
        rounds: ``[Nv]`` round (0-based) per kept token, −1 for dropped (``Selection.round_of``),
            :data:`FORCED_KEEP_ROUND` for a token kept only because the user forced it.
        num_rounds: colour count (default: max round + 1); forced: ``{"keep": [...], "drop": [...]}``
            tokens the user forced, outlined.
    """
    rounds = np.asarray(rounds, dtype=int).reshape(-1)
    forced_only = rounds == FORCED_KEEP_ROUND
    legend = " · washed out: dropped" + (" · orange: forced keep" if forced_only.any() else "")
    fig, grids, refs, panel_of = _base_figure(layout, image, f"{title}{legend}" if title else title, linked=True)
    custom, template = _hover(dict(hover or {}, round=rounds + 1), rounds.size)
    forced_template = _hover(hover, rounds.size)[1].replace("<extra>", "<br>kept: forced by you<extra>")
    colors = round_colors(num_rounds or int(rounds.max()) + 1 if rounds.max() >= 0 else 1)
    for p, (grid, ref) in enumerate(zip(grids, refs)):
        fig.add_trace(_dropped_layer(grid, rounds == -1, custom, template, ref))
        fig.add_trace(_round_layer(grid, rounds, custom, template, ref, colors, show=p == 0 and len(colors) > 1))
        if forced_only.any():
            fig.add_trace(_heat(grid, np.where(forced_only, 0.0, np.nan), custom, forced_template, ref,
                                colorscale=[[0, FORCED_KEEP_COLOR], [1, FORCED_KEEP_COLOR]], opacity=0.8,
                                showscale=False, name="forced keep"))
    boxes = np.asarray(layout["boxes"], dtype=float).reshape(-1, 4)
    fig.update_layout(shapes=_evidence_shapes(evidence, refs))
    for key, color in (("keep", "#ffffff"), ("drop", "#ff3030")):
        fig.add_traces(_outline(boxes, (forced or {}).get(key, []), color, panel_of, refs, f"forced {key}", width=2))
    if selected is not None:
        fig.add_traces(_outline(boxes, [selected], SELECTED_OUTLINE, panel_of, refs, "selected", width=3))
    return fig


STEP_JS = (Path(__file__).with_name("step.js")).read_text().strip()
"""A JavaScript function expression ``(gd, k) => bool`` that shows step ``k`` of a
:func:`selection_animation` rendered in the plot div ``gd`` (from the steps its ``layout.meta``
carries, in the browser, no server call); false when ``gd`` holds no animation. The app's step
control and Play, and the exported HTML, all call it."""

_HOT = ((0.0, (0, 0, 0)), (0.3, (230, 0, 0)), (0.6, (255, 210, 0)), (1.0, (255, 255, 255)))
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
TRANSPARENT = "rgba(0,0,0,0)"


def _rgb(color) -> str:
    return "rgb({},{},{})".format(*(round(c) for c in color))


def _viridis_at(t: float) -> tuple:
    """The round colours' ramp at ``t`` in [0, 1] (linear between five viridis anchors)."""
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    k = min(int(t), len(_VIRIDIS) - 2)
    a, b = _VIRIDIS[k], _VIRIDIS[k + 1]
    return tuple(a[i] + (b[i] - a[i]) * (t - k) for i in range(3))


def _hot_at(u: float) -> tuple:
    for (u0, a), (u1, b) in zip(_HOT, _HOT[1:]):
        if u <= u1:
            f = (u - u0) / (u1 - u0)
            return tuple(a[i] + (b[i] - a[i]) * f for i in range(3))
    return _HOT[-1][1]


def _log_hot_scale(decades: int = 4, per_decade: int = 2) -> list:
    """A colour scale for z in [0, zmax] whose colour follows log₁₀(z / zmax) from −``decades``
    (black) to 0 (white): stops every 1/``per_decade`` decade, linear between them. PC-MMR's
    penalties multiply, so its scores span decades; z itself stays the raw score (hover)."""
    count = decades * per_decade
    return [[0.0, _rgb(_hot_at(0.0))]] + [[10.0 ** (-decades * (1 - i / count)), _rgb(_hot_at(i / count))]
                                          for i in range(count + 1)]


def _reveal_scale(total: int, step: int) -> list:
    """Colour scale of the kept layer (z = round, zmin −0.5, zmax ``total`` − 0.5) at ``step``:
    round r < step gets ``round_colors(total)[r]``, round ``step`` (the chunk just taken) the chunk
    colour, later rounds are transparent. At most a dozen stops, whatever ``total``."""
    low, cut = step / total, (step + 1) / total  # the band of round ``step``
    if total == 1:
        return [[0.0, CHUNK_COLOR], [1.0, CHUNK_COLOR]]

    def at(p):  # ramp colour at normalised position p: round (p·total − 0.5)
        return _rgb(_viridis_at((p * total - 0.5) / (total - 1)))

    anchors = [(k / (len(_VIRIDIS) - 1) * (total - 1) + 0.5) / total for k in range(len(_VIRIDIS))]
    scale = ([[0.0, at(0.0)]] + [[p, at(p)] for p in anchors if p < low] + [[low, at(low)]]) if step else []
    scale += [[low, CHUNK_COLOR], [cut, CHUNK_COLOR]]
    return scale + ([[cut, TRANSPARENT], [1.0, TRANSPARENT]] if cut < 1.0 else [])


def _outline_xy(boxes: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x, y of rectangles around ``tokens`` (5 corners each, then a NaN gap)."""
    x0, y0, x1, y1 = boxes[tokens].T
    gap = np.full(tokens.size, np.nan)
    return (np.stack([x0, x1, x1, x0, x0, gap], axis=1).reshape(-1),
            np.stack([y0, y0, y1, y1, y0, gap], axis=1).reshape(-1))


def selection_animation(layout: dict, chunks: list, scores: list, floored: list, *, step: int = 0,
                        image: Image.Image | None = None, label: str = "PC-MMR", per_step_scores: bool = True,
                        height: int = 380) -> go.Figure:
    """Every step of a greedy selection (PC-MMR rounds or MMR steps) in one figure, shown at ``step``.

    Per panel: the remaining tokens' scores as a heat-map (``name="remaining"``, z the raw score,
    coloured on a log scale when ``per_step_scores``) and the kept tokens (``"kept"``; z the round
    that took each, one array for every step): rounds before the step in their round colour, the
    step's own chunk in :data:`CHUNK_COLOR`, later rounds transparent. ``layout.meta["dv_anim"]``
    carries what each step changes, applied in the browser by :data:`STEP_JS`: the title, the kept
    layer's colour scale (O(1)) and, with ``per_step_scores`` (PC-MMR: about log₂ M rounds), the
    remaining tokens' scores and their maximum (O(Nv) per round). Without it (classic MMR: one step
    per kept token) the heat-map shows the scores of the first step throughout.

    Args:
        layout: token layout (``Geometry.to_dict()``); chunks: per step, the token indices taken
            (``Selection.chunks`` as lists); scores: per step ``[Nv]`` scores the step chose from, NaN
            for already kept (``Selection.scores``); floored: per step, tokens its penalty floored.
        step: 0-based step shown (clamped to the valid range).
    """
    n = len(layout["boxes"])
    total = len(chunks)
    step = max(0, min(int(step), total - 1))
    rounds = np.full(n, -1)
    for r, chunk in enumerate(chunks):
        rounds[np.asarray(chunk, dtype=int)] = r
    fig, grids, refs, panel_of = _base_figure(layout, image, "", height=height)
    floored = list(floored) if floored else [0] * total

    def remaining(s: int) -> np.ndarray:  # [Nv] scores step s chose from, NaN for the tokens kept up to it
        if not per_step_scores:
            return np.asarray(scores[0], dtype=float).reshape(n)
        return np.where((rounds >= 0) & (rounds <= s), np.nan, np.asarray(scores[s], dtype=float).reshape(n))

    def title(s: int) -> str:
        kept_count = int(sum(len(c) for c in chunks[: s + 1]))
        return (f"{label} · round {s + 1}/{total} · chunk of {len(chunks[s])} · kept {kept_count} · "
                f"{floored[s]} floored")

    def peak(values: np.ndarray) -> float:
        finite = values[np.isfinite(values)]
        return float(finite.max()) if finite.size and finite.max() > 0 else 1.0

    token = np.arange(n, dtype=np.float32)
    first = remaining(0)
    finite = first[np.isfinite(first)]
    indices = {"remaining": [], "kept": []}
    shown = remaining(step)
    for p, (grid, ref) in enumerate(zip(grids, refs)):
        if per_step_scores:
            scale, zmin, zmax = _log_hot_scale(), 0.0, peak(shown)
        else:
            scale, zmin, zmax = "Hot", float(finite.min()) if finite.size else 0.0, peak(first)
        indices["remaining"].append(len(fig.data))
        fig.add_trace(_heat(grid, shown, token[:, None], "token %{customdata[0]:.0f}<br>score = %{z:.4g}<extra></extra>",
                            ref, colorscale=scale, zmin=zmin, zmax=zmax, opacity=0.6, showscale=False, name="remaining"))
        indices["kept"].append(len(fig.data))
        fig.add_trace(_heat(grid, np.where(rounds >= 0, rounds, np.nan), token[:, None],
                            "token %{customdata[0]:.0f}<br>taken at step %{z:.0f} (0-based)<extra></extra>", ref,
                            colorscale=_reveal_scale(total, step), zmin=-0.5, zmax=total - 0.5, opacity=0.8,
                            showscale=p == 0 and total > 1, name="kept", colorbar=_round_colorbar(total)))

    def encoded(values: np.ndarray, p: int) -> dict:
        return to_typed_array_spec(grids[p].grid(values).astype(np.float32))

    steps = []
    for s in range(total):
        entry = {"title": title(s), "scale": _reveal_scale(total, s)}
        if per_step_scores:
            values = remaining(s)
            entry.update(z=[encoded(values, p) for p in range(len(grids))], zmax=peak(values))
        steps.append(entry)
    fig.update_layout(title_text=title(step))
    fig.layout.meta = dict(dv_anim=dict(traces=indices, steps=steps))
    return fig


def compare_kept(layout: dict, kept_by_method: dict[str, list], *, image: Image.Image | None = None,
                 title: str = "", errors: dict[str, float] | None = None) -> go.Figure:
    """Kept masks of several methods side by side (one panel per method, first view only when a
    layout has several grids, so each panel stays legible).

    Args:
        kept_by_method: method name -> kept indices; errors: optional method -> weight error shown
            in the panel title.
    """
    grids = panels(layout)
    grid = grids[0]
    names = list(kept_by_method)
    n = len(layout["boxes"])
    fig = go.Figure()
    refs = _axes(fig, len(names), image, layout)
    for name, ref in zip(names, refs):
        kept = np.zeros(n, dtype=bool)
        kept[np.asarray(kept_by_method[name], dtype=int)] = True
        custom, template = _hover({"kept": kept.astype(float)}, n)
        fig.add_trace(_dropped_layer(grid, ~kept, custom, template, ref))
        label = name if not errors or name not in errors else f"{name}<br>error {errors[name]:.3f}"
        fig.add_annotation(text=label, xref=ref[0] + " domain", yref="paper", x=0.5, y=1.0, showarrow=False,
                           yanchor="bottom", font=dict(size=11))
    fig.update_layout(title=dict(text=f"{title} · washed out: dropped" if title else title, x=0.01, font=dict(size=14)),
                      height=260,
                      margin=dict(l=4, r=4, t=60, b=4), plot_bgcolor="white", paper_bgcolor="white")
    _caption(fig, layout)
    return fig
