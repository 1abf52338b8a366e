"""Launch the dualview Gradio app: ``python app.py [--model M ...] [--allow-any-model] [--host H] [--port P] [--share] [--device D]``.

Visitors choose among the ``--model`` models (repeatable; the first is loaded at start); loading
any other name or path is the operator's choice (``--allow-any-model``). The Hugging Face hub is
offline unless ``HF_HUB_OFFLINE`` is set otherwise in the environment.
"""

import argparse
import os


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="dualview: visual-token pruning of VLMs in the dual form of attention (Gradio app)")
    parser.add_argument("--model", action="append", default=None,
                        help="'builtin' (the shapes-world VLM, the default), a saved model directory, or a Hugging Face "
                             "id on disk; repeat it to offer several models to visitors")
    parser.add_argument("--allow-any-model", action="store_true",
                        help="let visitors type any model name or path (off by default: they choose among --model)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="open a public Gradio share link (off by default)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no downloads unless the operator's environment says so
    from dualview.app.launch import serve

    serve(models=args.model or ["builtin"], host=args.host, port=args.port, share=args.share, device=args.device,
          allow_any_model=args.allow_any_model)


if __name__ == "__main__":
    main()
