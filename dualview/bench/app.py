"""App responsiveness: model load, Run, and the re-selection events, timed through the API.

``python -m dualview.bench app [--model builtin] [--repeats 3] [--threads N]``

Launches the app in this process on a free local port with the shipped example scenes and times,
through ``gradio_client`` (what a browser's click costs the server, HTTP included):
- load: building the app with the model loaded (the cold start ``python app.py`` pays);
- run: ``/run`` on every example scene (first analysis, full and pruned answers, every map);
- budget / method / b0: ``/update`` after moving the budget, changing the method, changing b₀
  (maps, animations and error marker; the model must not run again).
Targets (issue 5, this 2-core CPU): run < 3 s, each update < 0.5 s, load < 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model: str = "builtin", repeats: int = 3, examples_dir=None, budgets=(22, 44)) -> dict:
    """Seconds per event (lists of samples) and the scenes used; ``budgets``: kept visual tokens at
    Run and after moving the budget (22 and 44 of the built-in model's 196 are 11.1 and 22.2 %)."""
    from gradio_client import Client, handle_file

    from dualview.app.examples import EXAMPLES_DIR
    from dualview.app.launch import create

    examples_dir = Path(examples_dir or EXAMPLES_DIR)
    start = time.perf_counter()
    demo, launch_kwargs = create(model, examples_dir=examples_dir)
    load = time.perf_counter() - start
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        samples = {"run": [], "budget": [], "method": [], "b0": []}
        scenes = sorted(p.stem for p in examples_dir.glob("*.png"))
        for _ in range(repeats):
            for scene in scenes:
                question = json.loads((examples_dir / f"{scene}.json").read_text())["question"]
                client.predict(scene, api_name="/example")
                samples["run"].append(_timed(lambda: client.predict(
                    handle_file(str(examples_dir / f"{scene}.png")), question, model, "iwp", budgets[0], "",
                    api_name="/run")))
                moved = budgets[1]
                for key, args in (("budget", ("iwp", moved)), ("method", ("fastv", moved)), ("b0", ("iwp", moved, False, 8))):
                    samples[key].append(_timed(lambda: client.predict(*args, api_name="/update")))
    finally:
        demo.close()
    return {"load_seconds": load, "samples": samples, "scenes": scenes}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the example scenes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.model, args.repeats)
    print(f"app responsiveness, model {args.model}, {platform.machine()}, {torch.get_num_threads()} torch threads")
    print(f"  load (app built, model loaded): {result['load_seconds']:.2f} s   target < 10 s")
    targets = {"run": 3.0, "budget": 0.5, "method": 0.5, "b0": 0.5}
    summary = {}
    for key, values in result["samples"].items():
        summary[key] = {"median": statistics.median(values), "max": max(values), "n": len(values)}
        print(f"  {key:<7} median {summary[key]['median']:.2f} s, max {summary[key]['max']:.2f} s "
              f"over {len(values)}   target < {targets[key]} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"suite": "app", "model": args.model, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "threads": torch.get_num_threads(), "load_seconds": result["load_seconds"], "summary": summary,
              "targets": targets, "scenes": result["scenes"], "samples": result["samples"]}
    (out / "app.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'app.json'}")


if __name__ == "__main__":
    main()
