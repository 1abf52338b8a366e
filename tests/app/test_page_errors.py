"""Issue 16 item 5: a refused event on the page leaves every view and the state as they were and
says the sentence in the status (and a toast); API clients still get the sentence as the call's error."""

import gradio as gr
import pytest
from gradio.context import LocalContext

from dualview.app import handlers, ui
from dualview.errors import DualviewError

BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/140.0", "accept": "*/*"}
API = {"user-agent": "gradio (https://gradio.app/)", "x-gradio-user": "api"}


class FakeRequest:
    def __init__(self, headers):
        self.headers = headers


def refuse(*_):
    raise DualviewError("The prompt is empty.")


@pytest.fixture()
def as_from(request):
    token = LocalContext.request.set(FakeRequest(request.param))
    yield request.param
    LocalContext.request.reset(token)


@pytest.mark.parametrize("as_from", [BROWSER], indirect=True)
def test_on_the_page_an_error_skips_every_view_but_the_status(as_from):
    outputs = ("state", "status", "kept", "budget")
    with pytest.warns(UserWarning, match="The prompt is empty"):  # the toast (a warning outside an event)
        result = ui.user_errors(refuse, outputs)(None)
    skipped = [value for name, value in zip(outputs, result) if name != "status"]
    assert skipped == [gr.skip()] * 3
    assert result[1].startswith("**Not done:** The prompt is empty. The views below are unchanged.")


@pytest.mark.parametrize("as_from", [BROWSER], indirect=True)
def test_the_status_after_an_error_repeats_the_analysis_still_shown(as_from):
    import tempfile

    from dualview.app.examples import load_examples
    from dualview.app.models import ModelHolder
    from dualview.shapes.world import write_examples

    folder = tempfile.mkdtemp()
    write_examples(folder)
    example = load_examples(folder)[0]
    holder = ModelHolder(device="cpu")
    state = handlers.run(holder, example["path"], example["question"], "builtin", "iwp", 20, "", [], None)["state"]
    before = handlers.update(state, "iwp", 20, [])["status"]

    def run(image, prompt, previous):
        return handlers.run(holder, image, prompt, "builtin", "iwp", 20, "", [], None)

    with pytest.warns(UserWarning):
        status = ui.user_errors(run, ("status",))(example["path"], "   ", state)
    assert status.endswith(before) and "prompt is empty" in status
    assert handlers.update(state, "iwp", 7, [])["summary"]["kept_count"] == 7  # the slider still works on it


@pytest.mark.parametrize("as_from", [API, {}], indirect=True)
def test_api_clients_get_the_sentence_as_the_calls_error(as_from):
    with pytest.raises(gr.Error) as refused:
        ui.user_errors(refuse, ("state", "status"))(None)
    assert refused.value.message == "The prompt is empty."
