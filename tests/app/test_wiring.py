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
