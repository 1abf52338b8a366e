"""Launch the dualview Gradio app (placeholder page until the app lands)."""

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description="dualview: visual-token pruning in the dual form of attention")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true")
    args = parser.parse_args()

    import gradio as gr

    with gr.Blocks(title="dualview") as demo:
        gr.Markdown("# dualview\nInformation magnitude, duplication and PC-MMR token pruning of VLMs. "
                    "The interactive views are under construction.")
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
