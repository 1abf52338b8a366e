"""The app-responsiveness suite on a tiny model: every event timed, nothing missing."""

from dualview.bench import app as suite
from dualview.engine.tiny import build_tiny
from dualview.shapes.world import write_examples


def test_app_suite_times_every_event(tmp_path):
    write_examples(tmp_path / "examples")
    model = str(build_tiny("llava", tmp_path / "tiny"))
    result = suite.measure(model, repeats=1, examples_dir=tmp_path / "examples", budgets=(4, 8))
    scenes = len(result["scenes"])
    assert scenes >= 3 and result["load_seconds"] > 0
    assert {k: len(v) for k, v in result["samples"].items()} == {k: scenes for k in ("run", "budget", "method", "b0")}
    assert all(t > 0 for values in result["samples"].values() for t in values)
