"""Figures from plain results: every token lands in its own cell, once, with its own numbers."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from dualview import figures
from dualview.engine.geometry import anyres, fixed_grid, merged_patch_grid
from dualview.selection import mmr, pc_mmr


def _layouts():
    return {
        "square": fixed_grid((224, 224), 14, (0.0, 0.0, 224.0, 224.0)).to_dict(),
        "qwen_wide": merged_patch_grid((300, 140), (10, 20), 2).to_dict(),  # 5 x 10, not square
        "anyres": anyres((300, 200), (2, 3), 4, (6, 10), (6, 10), newline=True).to_dict(),  # two views
        # a 3000 x 200 upload (downsized to 2048 x 137) squashed into a 14 x 14 square, and its transpose
        "strip": fixed_grid((2048, 137), 14, (0.0, 0.0, 2048.0, 137.0)).to_dict(),
        "tall": fixed_grid((137, 2048), 14, (0.0, 0.0, 137.0, 2048.0)).to_dict(),
    }


def _heatmaps(fig):
    return [t for t in fig.data if t.type == "heatmap"]


def _cell_values(trace):
    """(token index -> z) read back from a heat-map trace through its customdata."""
    z = np.asarray(trace.z, dtype=float)
    custom = np.asarray(trace.customdata, dtype=float)
    out = {}
    for r in range(z.shape[0]):
        for c in range(z.shape[1]):
            if np.isfinite(custom[r, c, 0]):
                out[int(custom[r, c, 0])] = z[r, c]
    return out


@pytest.mark.parametrize("name", ["square", "qwen_wide", "anyres", "strip", "tall"])
def test_token_map_puts_every_value_in_its_token_box(name):
    layout = _layouts()[name]
    n = len(layout["boxes"])
    values = np.random.default_rng(0).random(n)
    fig = figures.token_map(layout, values, hover={"magnitude": values * 2})
    traces = _heatmaps(fig)
    assert len(traces) == len(layout["views"])
    seen = {}
    boxes = np.asarray(layout["boxes"])
    for trace in traces:
        z = np.asarray(trace.z, dtype=float)
        custom = np.asarray(trace.customdata, dtype=float)
        x_edges, y_edges = np.asarray(trace.x), np.asarray(trace.y)
        assert z.shape == (len(y_edges) - 1, len(x_edges) - 1)
        for r in range(z.shape[0]):
            for c in range(z.shape[1]):
                token = int(custom[r, c, 0])
                assert token not in seen
                seen[token] = z[r, c]
                # the cell's edges are the token's box, the hover numbers are the token's
                assert np.allclose([x_edges[c], y_edges[r], x_edges[c + 1], y_edges[r + 1]], boxes[token], atol=1e-3)
                assert custom[r, c, 1] == pytest.approx(values[token] * 2)
    assert sorted(seen) == list(range(n))
    assert np.allclose([seen[i] for i in range(n)], values)
    assert "magnitude" in traces[0].hovertemplate and "token" in traces[0].hovertemplate


def test_token_map_outlines_selected_token_and_evidence():
    layout = _layouts()["square"]
    fig = figures.token_map(layout, np.zeros(196), selected=15, evidence=[[10, 20, 30, 40]])
    assert figures.outlined_tokens(fig, "selected") == [tuple(layout["boxes"][15])]
    assert [(s.x0, s.y0, s.x1, s.y1) for s in fig.layout.shapes] == [(10, 20, 30, 40)]


def test_token_map_draws_the_image_underneath():
    layout = _layouts()["qwen_wide"]
    fig = figures.token_map(layout, np.zeros(50), image=Image.new("RGB", (300, 140), "red"))
    (img,) = fig.layout.images
    assert (img.sizex, img.sizey) == (300, 140)  # original pixel coordinates
    assert img.source.startswith("data:image/jpeg;base64,")
    import base64
    import io

    shown = Image.open(io.BytesIO(base64.b64decode(img.source.partition(",")[2])))
    assert shown.size == (300, 140) and shown.getpixel((150, 70))[0] > 240  # small enough: drawn as is
    big = figures.token_map(layout, np.zeros(50), image=Image.new("RGB", (3000, 1400), "red")).layout.images[0]
    assert Image.open(io.BytesIO(base64.b64decode(big.source.partition(",")[2]))).size == (512, 239)
    assert fig.layout.yaxis.range == (140, 0)  # image coordinates: y grows downwards


def _caption(fig):
    """The text of the figure's stretch caption (None: none)."""
    texts = [a.text for a in fig.layout.annotations if a.name == "stretch"]
    assert len(texts) <= 1
    return texts[0] if texts else None


def _every_map(layout):
    n = len(layout["boxes"])
    magnitude, duplication = _traced(n)
    selection = pc_mmr(magnitude, duplication, 40, b0=2, growth=2, lam=5.0)
    rounds = np.full(n, -1)
    rounds[:3] = 0
    return {"token_map": figures.token_map(layout, np.zeros(n), title="magnitude"),
            "kept_map": figures.kept_map(layout, rounds, title="kept"),
            "selection_animation": figures.selection_animation(layout, [c.tolist() for c in selection.chunks],
                                                               [x.numpy() for x in selection.scores], selection.floored),
            "compare_kept": figures.compare_kept(layout, {"a": [0, 1], "b": [2]}, title="compare")}


@pytest.mark.parametrize("name, axis", [("strip", "vertically"), ("tall", "horizontally")])
def test_maps_of_a_strip_are_stretched_as_the_picker_is_and_say_so(name, axis):
    """Every map of a squashed strip draws its y unit stretch_y / stretch_x times as long as its x
    unit, the factor the picker uses (picker_picture's own scales), with the axes still in the
    picture's pixels (range, background image) and the caption in the title."""
    from dualview.figures.picker import picker_picture

    layout = _layouts()[name]
    width, height = layout["image_size"]
    _, (scale_x, scale_y) = picker_picture(Image.new("RGB", (width, height)), layout)
    factor = max(scale_x, scale_y) / min(scale_x, scale_y)
    assert factor > 3
    for kind, fig in _every_map(layout).items():
        for axis_name in (k for k in fig.layout.to_plotly_json() if k.startswith("yaxis")):
            assert fig.layout[axis_name].scaleratio == pytest.approx(scale_y / scale_x), kind
            assert fig.layout[axis_name].range == (height, 0), kind
        assert fig.layout.xaxis.range == (0, width)
        assert _caption(fig) == f"drawn stretched {factor:.1f} x {axis}<br>so patches can be seen", kind


def test_maps_of_ordinary_pictures_are_not_stretched():
    for name in ("square", "qwen_wide", "anyres"):
        for kind, fig in _every_map(_layouts()[name]).items():
            assert fig.layout.yaxis.scaleratio == 1, (name, kind)
            assert _caption(fig) is None and fig.layout.margin.b == 4, (name, kind)


def test_kept_map_colours_kept_tokens_by_round_and_dims_the_rest():
    layout = _layouts()["anyres"]
    n = len(layout["boxes"])
    rounds = np.full(n, -1)
    rounds[[0, 5, 40]] = [0, 1, 1]
    fig = figures.kept_map(layout, rounds, forced={"keep": [40], "drop": [3]})
    dropped, kept = {}, {}
    for trace in _heatmaps(fig):
        (dropped if trace.name == "dropped" else kept).update(_cell_values(trace))
    assert {t for t, z in dropped.items() if np.isfinite(z)} == set(range(n)) - {0, 5, 40}
    assert {t: z for t, z in kept.items() if np.isfinite(z)} == {0: 0.0, 5: 1.0, 40: 1.0}
    assert figures.outlined_tokens(fig, "forced keep") == [tuple(layout["boxes"][40])]
    assert figures.outlined_tokens(fig, "forced drop") == [tuple(layout["boxes"][3])]


def test_only_the_linked_kept_map_carries_every_tokens_box():
    """The linked hover (app/linking.js) reads each token's box and panel axis from the kept map;
    the other maps do not carry them (0.2 MB a figure at 7 209 tokens)."""
    layout = _layouts()["anyres"]
    maps = _every_map(layout)
    meta = maps["kept_map"].layout.meta
    assert meta["dv_boxes"] == [[round(v) for v in box] for box in layout["boxes"]]
    for token, xref in enumerate(meta["dv_xref"]):
        assert xref == ("x" if layout["view"][token] == 0 else "x2")
    for name, fig in maps.items():
        if name != "kept_map":
            assert "dv_boxes" not in (fig.layout.meta or {}), name


def _traced(n: int = 196):
    torch.manual_seed(0)
    magnitude = torch.rand(n, dtype=torch.float64)
    features = torch.nn.functional.normalize(torch.randn(n, 6, dtype=torch.float64), dim=1)
    duplication = (features @ features.T) ** 2
    return magnitude, duplication


def _colour_at(scale, p):
    """The colour a plotly colour scale gives at normalised position ``p`` (its own stops, the last
    stop at an equal position winning, as plotly draws a band edge)."""
    for (p0, c0), (p1, c1) in zip(scale, scale[1:]):
        if p0 <= p < p1 or (p == p1 == 1.0):
            if c0 == c1 or p1 == p0:
                return c1 if p == p1 else c0
            a, b = (np.array(re.findall(r"[\d.]+", c)[:3], dtype=float) for c in (c0, c1))
            return "rgb({},{},{})".format(*np.round(a + (b - a) * (p - p0) / (p1 - p0)).astype(int))
    raise AssertionError(p)


def _at_step(fig, s):
    """What the browser shows after STEP_JS(gd, s): the step's entry applied to ``fig`` (a
    transcription of dualview/figures/step.js)."""
    import base64

    out = json.loads(fig.to_json())
    anim = out["layout"]["meta"]["dv_anim"]
    entry, traces = anim["steps"][s], anim["traces"]
    for i in traces["kept"]:
        out["data"][i]["colorscale"] = entry["scale"]
    if "z" in entry:
        for p, i in enumerate(traces["remaining"]):
            spec = entry["z"][p]
            shape = [int(v) for v in spec["shape"].split(",")]
            out["data"][i]["z"] = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.float32).reshape(shape)
            out["data"][i]["zmax"] = entry["zmax"]
    out["layout"]["title"]["text"] = entry["title"]
    return out


@pytest.mark.parametrize("name", ["square", "anyres"])
def test_selection_animation_shows_kept_so_far_new_chunk_and_remaining_scores(name):
    layout = _layouts()[name]
    n = len(layout["boxes"])
    magnitude, duplication = _traced()
    selection = pc_mmr(magnitude[:n], duplication[:n, :n], 40, b0=2, growth=2, lam=5.0)
    chunks = [c.tolist() for c in selection.chunks]
    scores = [s.numpy() for s in selection.scores]
    total = len(chunks)
    final = {t: r for r in range(total) for t in chunks[r]}
    colors = figures.round_colors(total)
    first = figures.selection_animation(layout, chunks, scores, selection.floored)
    for step in range(total):
        fig = figures.selection_animation(layout, chunks, scores, selection.floored, step=step)
        remaining = {}
        for trace in (t for t in fig.data if t.name == "remaining"):
            remaining.update(_cell_values(trace))
        so_far = {t: r for r in range(step + 1) for t in chunks[r]}
        # remaining tokens carry the raw scores this round chose from; kept ones (this chunk too) none
        alive = [t for t in range(n) if t not in so_far]
        assert np.allclose([remaining[t] for t in alive], scores[step][alive].astype(np.float32))
        assert all(not np.isfinite(remaining[t]) for t in so_far)
        # the kept layer holds every token's round; its colour scale shows exactly the rounds so far
        for trace in (t for t in fig.data if t.name == "kept"):
            cells = {t: z for t, z in _cell_values(trace).items() if np.isfinite(z)}
            assert all(final[t] == int(z) for t, z in cells.items())
            scale = [list(stop) for stop in trace.colorscale]
            for r in range(total):
                shown = _colour_at(scale, (r + 0.5) / total)
                expected = colors[r] if r < step else figures.CHUNK_COLOR if r == step else "rgba(0,0,0,0)"
                assert shown == expected, (step, r, shown)
        title = fig.layout.title.text
        assert f"round {step + 1}/{total}" in title and f"chunk of {len(chunks[step])}" in title
        assert f"{selection.floored[step]} floored" in title
        # what the browser applies to the first figure is this step's figure
        applied, direct = _at_step(first, step), json.loads(fig.to_json())
        assert applied["layout"]["title"]["text"] == direct["layout"]["title"]["text"]
        for a, d in zip(applied["data"], direct["data"]):
            if a["name"] == "remaining":
                assert np.array_equal(np.asarray(a["z"], dtype=float), _plain(d["z"]), equal_nan=True)
                assert a["zmax"] == d["zmax"]
            if a["name"] == "kept":
                assert [list(x) for x in a["colorscale"]] == [list(x) for x in d["colorscale"]]
    # out-of-range steps are clamped, not errors
    last = figures.selection_animation(layout, chunks, scores, selection.floored, step=99)
    assert f"round {total}/{total}" in last.layout.title.text


def _plain(array):
    from tests.app.test_api import decode

    return np.asarray(decode(array), dtype=float)


def test_classic_mmr_steps_carry_no_per_step_scores():
    """One step per kept token: a step changes a colour scale, an outline and a title, never O(Nv) data."""
    layout = _layouts()["qwen_wide"]
    magnitude, duplication = _traced()
    selection = mmr(magnitude[:50], duplication[:50, :50], 30, trade=0.5)
    fig = figures.selection_animation(layout, [c.tolist() for c in selection.chunks],
                                      [s.numpy() for s in selection.scores], selection.floored, step=3,
                                      per_step_scores=False, label="classic MMR")
    remaining = _cell_values(next(t for t in fig.data if t.name == "remaining"))
    assert np.allclose([remaining[t] for t in range(50)], selection.scores[0].numpy().astype(np.float32))
    steps = fig.layout.meta["dv_anim"]["steps"]
    assert len(steps) == 30 and all("z" not in s for s in steps)
    assert max(len(json.dumps(s)) for s in steps) < 600
    assert "classic MMR · round 4/30" in fig.layout.title.text


def test_error_curves_one_line_per_method_and_metric_with_budget_marker():
    curves = {"iwp": {"weight_error": [0.5, 0.3], "effective_rank": [2.0, 3.0], "attention_error": [0.2, 0.1]},
              "oracle": {"weight_error": [0.4, 0.2]}}
    fig = figures.error_curves([10, 20], curves, current=15, num_visual=40, highlight="iwp")
    lines = [(t.name, tuple(t.y)) for t in fig.data]
    assert ("iwp", (0.5, 0.3)) in lines and ("oracle", (0.4, 0.2)) in lines and ("iwp", (2.0, 3.0)) in lines
    assert len(fig.data) == 4
    assert [s.x0 for s in fig.layout.shapes] == [15, 15, 15]
    # one colour per method in every panel, a legend entry per method (issue 16 item 8)
    colors = {}
    for trace in fig.data:
        colors.setdefault(trace.name, set()).add(trace.line.color)
    assert all(len(c) == 1 for c in colors.values()) and len({c.pop() for c in colors.values()}) == 2
    assert sorted(t.name for t in fig.data if t.showlegend) == ["iwp", "oracle"]
    many = figures.error_curves([10, 20], {m: {"weight_error": [0.5, 0.3]} for m in
                                           ["iwp", "iwp-magnitude", "random", "fastv", "divprune", "oracle"]})
    assert len({t.line.color for t in many.data}) == 6


def test_project_2d_matches_an_independent_svd():
    x = np.random.default_rng(1).normal(size=(30, 8))
    points = figures.project_2d(x)
    centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    reference = u[:, :2] * s[:2]
    for k in range(2):  # equal up to the sign of each component
        assert np.allclose(np.abs(points[:, k]), np.abs(reference[:, k]), atol=1e-8)
    assert np.allclose(figures.project_2d(np.ones((5, 1)))[:, 1], 0.0)


def test_token_space_groups_tokens_by_round():
    rounds = np.array([-1, 0, 0, 1, -1, 2])
    fig = figures.token_space(np.arange(12.0).reshape(6, 2), rounds, selected=3)
    groups = {t.name: sorted(int(c[0]) for c in t.customdata) for t in fig.data if t.customdata is not None}
    assert groups == {"dropped": [0, 4], "round 1": [1, 2], "round 2": [3], "round 3": [5]}
    assert fig.data[-1].x == (6.0,) and fig.data[-1].y == (7.0,)


def test_compare_kept_one_panel_per_method():
    layout = _layouts()["square"]
    fig = figures.compare_kept(layout, {"a": [0, 1], "b": [2]}, errors={"a": 0.5})
    assert len(fig.data) == 2
    dropped_a = {t for t, z in _cell_values(fig.data[0]).items() if np.isfinite(z)}
    assert dropped_a == set(range(196)) - {0, 1}
    assert "error 0.500" in fig.layout.annotations[0].text


def test_animation_html_is_self_contained_and_has_every_step():
    layout = _layouts()["square"]
    magnitude, duplication = _traced()
    selection = pc_mmr(magnitude, duplication, 30, b0=2, growth=2, lam=5.0)
    chunks = [c.tolist() for c in selection.chunks]
    fig = figures.selection_animation(layout, chunks, [s.numpy() for s in selection.scores], selection.floored)
    html = figures.animation_html(fig)
    assert "<script src=" not in html and "Plotly.newPlot" in html and "plotly_sliderchange" in html
    spec = json.loads(re.search(r'<script id="dv-figure" type="application/json">(.*?)</script>', html, re.S).group(1))
    assert [s["label"] for s in spec["layout"]["sliders"][0]["steps"]] == [str(i + 1) for i in range(len(chunks))]
    assert len(spec["layout"]["meta"]["dv_anim"]["steps"]) == len(chunks)
    # plotly.js travels inside, compressed: the page needs no network
    import base64
    import gzip

    from plotly.offline import get_plotlyjs

    packed = re.search(r'atob\("([A-Za-z0-9+/=]+)"\)', html).group(1)
    assert gzip.decompress(base64.b64decode(packed)).decode() == get_plotlyjs()
    with pytest.raises(ValueError):
        figures.animation_html(figures.token_map(layout, np.zeros(196)))
