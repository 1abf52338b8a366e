"""The served app at a real token count (issue 15): LLaVA-OneVision's public 7B geometry at tiny
widths, a 1920 × 1080 picture, 7 209 visual tokens. Sizes, not times, are asserted here (the
times are `python -m dualview.bench scale`'s job)."""

import json

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from tests.app.conftest import view

PROMPT = "what color is the circle?"
MAP_BYTES, EVENT_BYTES = 1_000_000, 5_000_000
PLOTS = ("magnitude", "duplication", "kept", "row", "pcmmr_plot", "space", "attention_map", "share_map")


@pytest.fixture(scope="module")
def large(served, tmp_path_factory):
    from dualview.engine.tiny import build_tiny

    root = tmp_path_factory.mktemp("scale")
    model = str(build_tiny("llava_onevision", root / "ov", geometry="real"))
    pixels = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)  # noise: the worst JPEG
    Image.fromarray(pixels).save(root / "noise.png")
    client = Client(served["url"], verbose=False)
    out = client.predict(handle_file(str(root / "noise.png")), PROMPT, model, "iwp", 800, "", api_name="/run")
    return {"client": client, "model": model, "out": out, "served": served}


def plot_bytes(outputs) -> dict:
    """Bytes of each plot an event sent (views it left unchanged send none)."""
    return {name: len(view(outputs, name)["plot"]) for name in PLOTS
            if isinstance(view(outputs, name), dict) and "plot" in view(outputs, name)}


def test_a_run_at_seven_thousand_tokens_keeps_any_budget_the_model_allows(large):
    summary = view(large["out"], "summary")
    assert summary["num_visual"] == 7209  # LLaVA-OneVision-7B's count for 1920 x 1080
    assert summary["kept_count"] == 800 == len(set(summary["kept"]))  # far above the slider's built range


def test_every_view_of_a_run_and_an_update_stays_small(large):
    sizes = plot_bytes(large["out"])
    assert set(sizes) >= {"magnitude", "kept", "row", "space"}
    assert max(sizes.values()) <= MAP_BYTES, sizes
    assert len(json.dumps(large["out"], default=str)) <= EVENT_BYTES
    moved = large["client"].predict("iwp", 1600, api_name="/update")
    assert view(moved, "summary")["kept_count"] == 1600
    assert max(plot_bytes(moved).values()) <= MAP_BYTES
    assert len(json.dumps(moved, default=str)) <= EVENT_BYTES


def test_the_compact_views_carry_the_engines_own_numbers(large):
    """The kept map's cells and the summary's measures are the engine's, for the same kept set."""
    from dualview.methods import get_method
    from tests.app.test_api import cell_values, plot_json

    out = large["client"].predict("iwp", 800, api_name="/update")
    summary = view(out, "summary")
    session = large["served"]["demo"].model_holder.get(large["model"])
    assert Image.open(view(large["out"], "picker")).size == (512, 288)  # the picker gets the display-size picture
    analysis = next(iter(session._analyses.values()))
    kept = get_method("iwp").select(analysis, 800).kept
    assert summary["kept"] == kept.tolist()
    for name, value in analysis.measures(kept).items():
        assert summary["measures"][name] == pytest.approx(value, rel=1e-12), name
    drawn = {}
    for trace in plot_json(view(out, "kept"))["data"]:
        if trace.get("name") == "kept":
            drawn.update({t: z for t, z in cell_values(trace).items() if np.isfinite(z)})
    assert sorted(drawn) == sorted(kept.tolist())
    magnitude = {}
    for trace in plot_json(view(large["out"], "magnitude"))["data"]:  # drawn by the Run (an update leaves it)
        if trace.get("type") == "heatmap":
            magnitude.update(cell_values(trace))
    assert torch.allclose(torch.tensor([magnitude[t] for t in range(analysis.num_visual)], dtype=torch.float32),
                          analysis.magnitude, rtol=1e-6)


def test_the_animations_are_sent_once_and_the_export_stays_under_five_megabytes(large):
    """Issue 15 items 1 and 2: every PC-MMR round lives in the one figure a selection sends (the
    browser steps it), classic MMR's hundreds of steps cost O(1) each, and the offline HTML export
    (plotly.js inlined) is at most 5 MB."""
    from tests.app.test_api import plot_json

    chunks = view(large["out"], "summary")["pcmmr"]["chunks"]
    animation = plot_json(view(large["out"], "pcmmr_plot"))
    assert len(animation["layout"]["meta"]["dv_anim"]["steps"]) == len(chunks)
    client = large["client"]
    classic = client.predict(api_name="/classic_view")[0]
    assert len(classic["plot"]) <= MAP_BYTES
    steps = plot_json(classic)["layout"]["meta"]["dv_anim"]["steps"]
    assert len(steps) == 800 and max(len(json.dumps(s)) for s in steps) <= 1_000
    files, _ = client.predict(api_name="/export")
    paths = [f if isinstance(f, str) else f.get("path") or f["name"] for f in files]
    html = next(p for p in paths if p.endswith(".html"))
    import os

    assert os.path.getsize(html) <= EVENT_BYTES, os.path.getsize(html)
