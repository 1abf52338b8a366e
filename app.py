"""Launch the dualview Gradio app: ``python app.py [--model M] [--host H] [--port P] [--share] [--device D]``."""

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="dualview: visual-token pruning of VLMs in the dual form of attention (Gradio app)")
    parser.add_argument("--model", default="builtin",
                        help="'builtin' (the shapes-world VLM), a saved model directory, or a Hugging Face id on disk")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="open a public Gradio share link (off by default)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from dualview.app.launch import serve

    serve(model=args.model, host=args.host, port=args.port, share=args.share, device=args.device)


if __name__ == "__main__":
    main()
