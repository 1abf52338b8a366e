"""How the page's events queue (gradio's default for a click drops it while the last one runs)."""

from dualview.app.models import ModelHolder
from dualview.app.ui import build_demo


def test_runs_and_reselections_pressed_during_another_are_not_dropped():
    demo = build_demo(ModelHolder())  # no model is loaded to build the page
    modes = {d["api_name"]: d["trigger_mode"] for d in demo.config["dependencies"] if d.get("api_name")}
    # a second Run (new picture or prompt) waits and runs: the views end on the last inputs (review finding)
    assert modes["run"] == "always_last"
    # every committed budget move re-selects, the latest of those waiting
    assert modes["update"] == "always_last"


def _chain_after(deps: list, first: dict) -> list[dict]:
    """The steps chained (`.then`) after ``first``, in order."""
    steps, current = [], first
    while following := [d for d in deps if d.get("trigger_after") == current["id"]]:
        current = following[0]
        steps.append(current)
    return steps


def test_a_reselection_sends_the_answer_before_the_detail_views_and_the_curves_last():
    """The kept map first (the update itself), then the answer, then the heavy detail views (drawn
    right after the kept map they held up its drawing in Chromium at 7 209 tokens), then the curves."""
    demo = build_demo(ModelHolder())
    deps = demo.config["dependencies"]
    update = next(d for d in deps if d.get("api_name") == "update")
    steps = _chain_after(deps, update)
    assert [s["api_name"] for s in steps[:2]] == ["answer", "details"]
    assert len(steps) == 3 and [demo.blocks[i].elem_id for i in steps[2]["outputs"]] == ["curves"]
