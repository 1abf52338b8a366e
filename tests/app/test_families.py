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
