"""One app, launched once per test session in this process and shared by every app test.

It serves the built-in model (the default in the model box) and a tiny random LLaVA that tests
name in the model box; the example scenes are written fresh by the shapes-world generator.
"""

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dualview.app.layout import VIEWS  # noqa: E402

API_VIEWS = [name for name in VIEWS if name != "state"]
"""``/run`` and ``/update`` outputs as a client sees them (gr.State is not sent)."""


def view(outputs, name: str):
    """The output ``name`` of a ``/run`` or ``/update`` call."""
    return outputs[API_VIEWS.index(name)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    from dualview.app.launch import create
    from dualview.engine.tiny import build_tiny
    from dualview.shapes.world import write_examples

    root = tmp_path_factory.mktemp("app")
    write_examples(root / "examples")
    tiny = str(build_tiny("llava", root / "tiny"))
    # the tests name many models (tiny, real-geometry, every family): the operator's any-model switch is on here
    demo, launch_kwargs = create(["builtin", tiny], examples_dir=root / "examples", allow_any_model=True)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True,
                **launch_kwargs)
    yield {"url": f"http://127.0.0.1:{port}/", "builtin": "builtin", "tiny": tiny, "root": root,
           "examples": root / "examples", "demo": demo}
    demo.close()
