"""Start the app: load the model once, build the page, serve it with safe defaults."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from dualview.errors import DualviewError

MAX_UPLOAD = "20mb"
QUEUE_CONCURRENCY = 2


def create(models="builtin", device: str | None = None, examples_dir=None, allow_any_model: bool = False):
    """The Blocks app with the first of ``models`` already loaded (a DualviewError when it cannot be)
    and the keyword arguments its ``launch`` needs (page CSS, the linked-hover script, the upload size
    limit, the example folder, no run history).

    ``models``: a name or a list of names visitors may choose among; with ``allow_any_model`` they
    may also type any other name or path (an operator's choice: it lets visitors make the server
    read directories and, where downloads are on, fetch models)."""
    from dualview.app.models import ModelHolder
    from dualview.app.ui import CSS, build_demo

    import sklearn.decomposition  # noqa: F401 - imported now so the first token-space view is fast

    models = [models] if isinstance(models, str) else list(models)
    holder = ModelHolder(device=device, allowed=None if allow_any_model else models)
    holder.get(models[0])
    from dualview.app.examples import EXAMPLES_DIR

    examples = Path(examples_dir or EXAMPLES_DIR).resolve()
    demo = build_demo(holder, default_model=models[0], examples_dir=examples, models=models,
                      allow_any_model=allow_any_model)
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY, max_size=64)
    # What is loaded now (libraries, the first model, the page) lives as long as the server: frozen
    # out of the cyclic garbage collector, whose full passes otherwise walk it (about 0.5 M objects,
    # 0.3 s a pass) in the middle of an update now and then (a budget move at 7 209 tokens took
    # 0.5 s or 2 s depending on whether one fell in it). Cost: if the first model is later evicted
    # by ModelHolder, what of it only a reference cycle holds is never freed (once).
    gc.collect()
    gc.freeze()
    # the example pictures are served from their own folder whatever the working directory; nothing else is
    # added. No run history: gradio's keeps every event's inputs and outputs (whole figures) in the browser's
    # localStorage, re-read and rewritten several times per event (about 0.8 s of a budget move in
    # Chromium at 7 209 tokens), and keeps visitors' pictures and prompts on the machine they used.
    return demo, {"css": CSS, "js": (Path(__file__).with_name("linking.js")).read_text(), "max_file_size": MAX_UPLOAD,
                  "allowed_paths": [str(examples)], "run_history": False}


def serve(models="builtin", host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          device: str | None = None, allow_any_model: bool = False) -> None:
    """Load, build and launch (blocking). Prints one sentence and exits 2 when the model cannot load."""
    try:
        demo, page = create(models, device, allow_any_model=allow_any_model)
    except DualviewError as error:
        print(f"dualview: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    demo.launch(server_name=host, server_port=port, share=share, show_error=True, **page)
