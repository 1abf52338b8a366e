"""The app runs on a tiny model of every family added for issue 20 (and the generic path), named in
the model box of the session's shared app and driven through gradio_client: ``/run`` returns every
view and its status line counts that model's own visual tokens."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gradio_client import Client, handle_file  # noqa: E402

from tests.app.conftest import API_VIEWS, view  # noqa: E402
from tests.engine_tiny import tiny_dir, tiny_session  # noqa: E402

FAMILIES = ("qwen3_vl", "idefics3", "smolvlm", "gemma3", "internvl", "paligemma")
EXAMPLE = "04_count_objects"


@pytest.fixture(scope="module")
def client(served):
    return Client(served["url"], verbose=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_run_on_every_family(served, client, family):
    from dualview.images import load_image

    image = served["examples"] / f"{EXAMPLE}.png"
    question = json.loads((served["examples"] / f"{EXAMPLE}.json").read_text())["question"]
    client.predict(EXAMPLE, api_name="/example")
    out = client.predict(handle_file(str(image)), question, tiny_dir(family), "iwp", 3, "", 2, 2, 5.0,
                         api_name="/run")
    assert len(out) == len(API_VIEWS)
    count = tiny_session(family).prepare(load_image(str(image)), question).num_visual
    assert f"keeps **3** of {count} visual tokens" in view(out, "status")


def test_the_status_line_says_when_the_map_is_not_spatial():
    """A not-spatial geometry (the generic path's strip) puts its note under the status line."""
    from types import SimpleNamespace

    from dualview.app.views import status_text
    from dualview.engine import geometry as geo

    measures = dict.fromkeys(("weight_error", "effective_rank", "visual_weight_error", "visual_effective_rank",
                              "attention_error"), 0.5)
    for geometry in (geo.strip((40, 30), 8, "Shown in token order."), geo.fixed_grid((40, 30), 2, (0, 0, 40, 30))):
        state = SimpleNamespace(measures=lambda: measures, forced_keep=[], forced_drop=[], kept=lambda: [0, 1],
                                num_visual=geometry.num_visual, request=SimpleNamespace(method="iwp", prompt="p"),
                                analysis=SimpleNamespace(layer=1, num_layers=4, geometry=geometry), prune_layer=1,
                                changed=[], layout=geometry.to_dict())
        text = status_text(state)
        assert ("**Note:** Shown in token order." in text) == (not geometry.spatial)
