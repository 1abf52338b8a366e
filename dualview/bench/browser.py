"""Browser responsiveness: what a visitor waits for in Chromium, not what the API answers.

``python -m dualview.bench browser [--repeats 5] [--out results]``

Launches the app in this process twice (the built-in model, and a LLaVA-OneVision with the public
7B checkpoint's geometry at tiny widths, ``build_tiny("llava_onevision", dir, geometry="real")``,
given a 1920 × 1080 noise picture: 7 209 visual tokens) and drives Debian's chromium through
playwright (``executable_path=/usr/bin/chromium``; never ``playwright install``). Medians over
``--repeats`` of, measured from the click to the moment the page shows the result:

- **budget**: the budget slider moved (a click on its track) → the kept map's title shows the new
  count (the map redrawn); targets ≤ 0.5 s on the built-in model (issue 16), ≤ 1.5 s at ~7 200
  tokens (issue 15). Each move starts from a settled page, as a visitor's does: the previous
  move's chained steps (other views, answer, curves) have finished (:func:`_settle`: the server's
  queue has been empty for 2.5 s);
- **run**: Run pressed with a new prompt → the status, the three maps and the answers show it
  (the maps tab open); target ≤ 2 s on the built-in model;
- **run → curves**: the same with the error-curves tab open, until the curves (the step chained
  after the Run) are drawn: a tab the page does not show is not drawn, so this is its own series.

Writes ``results/browser.json`` and ``results/browser.md`` (the README's table between
``<!-- bench:browser -->`` markers; ``python -m dualview.bench readme`` copies it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPTS = ("what color is the circle?", "what shape is the red object?", "how many objects are there?",
           "how many circles are there?", "is there a red circle?", "what letter is written?",
           "where is the blue square?", "what color is the square?", "what shape is the blue object?",
           "how many squares are there?", "is there a blue square?", "where is the red circle?",
           "what color is the triangle?", "how many triangles are there?")
"""One new prompt per Run (a repeated prompt would find the session's cached analysis)."""
TARGETS = {("builtin", "budget"): 0.5, ("builtin", "run"): 2.0, ("builtin", "curves"): 2.0,
           ("llava_onevision", "budget"): 1.5}
TIMEOUT_MS = 600_000
CURVES = "#curves .js-plotly-plot"
REMEMBER_CURVES = f"() => {{ const gd = document.querySelector('{CURVES}'); window.__dvCurves = gd ? gd.data : null; }}"
NEW_CURVES = (f"() => {{ const gd = document.querySelector('{CURVES}'); "
              "return !!(gd && gd.data && gd.data.length && gd.data !== window.__dvCurves); }")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model: str, examples_dir: Path):
    from dualview.app.launch import create

    demo, launch_kwargs = create(model, examples_dir=examples_dir)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    return demo, f"http://127.0.0.1:{port}/"


def _budget_move(page, fraction: float) -> float:
    """Seconds from a click at ``fraction`` of the budget slider's track to the kept map showing it."""
    slider = page.locator("#budget input[type=range]")
    box = slider.bounding_box()
    before = page.locator("#budget input[type=number]").input_value()
    start = time.perf_counter()
    page.mouse.click(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)
    count = page.locator("#budget input[type=number]").input_value()
    if count == before:
        raise RuntimeError(f"the budget did not move from {before} (click at {fraction:.2f} of the track)")
    page.locator("#map-kept .gtitle").filter(has_text=f"Kept: {count} /").wait_for(timeout=TIMEOUT_MS)
    return time.perf_counter() - start


def _settle(page, demo, quiet_s: float = 2.5) -> None:
    """Give the page the time a visitor looks at a move's result: every step chained after it
    (other views, answer, curves) has run. The page sends each step when the one before has
    reached it, so the server is settled once its queue has held no event, queued or running, for
    ``quiet_s`` seconds (longer than the page takes to draw a step's result and send the next: about a
    second for the detail views at 7 209 tokens)."""
    queue = demo._queue
    deadline = time.perf_counter() + TIMEOUT_MS / 1000
    quiet_since = None
    while time.perf_counter() < deadline:
        busy = len(queue) > 0 or any(job is not None for job in queue.active_jobs)
        now = time.perf_counter()
        quiet_since = None if busy else (quiet_since or now)
        if quiet_since is not None and now - quiet_since >= quiet_s:
            return
        page.wait_for_timeout(50)
    raise RuntimeError("the app's queue did not settle")


def _run(page, prompt: str, curves: bool) -> float:
    """Seconds from pressing Run with ``prompt`` to the maps tab's views showing it (``curves``:
    to the error curves being drawn, their tab open)."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Low-rank error" if curves else "Dual-form maps").click()
    if curves:
        expect(page.locator(CURVES)).to_be_visible(timeout=TIMEOUT_MS)
        page.evaluate(REMEMBER_CURVES)
    page.locator("#prompt textarea").fill(prompt)
    start = time.perf_counter()
    page.locator("#run").click()
    expect(page.locator("#status")).to_contain_text(f"“{prompt}”", timeout=TIMEOUT_MS)
    if curves:
        page.wait_for_function(NEW_CURVES, timeout=TIMEOUT_MS)
    else:
        for elem_id in ("map-magnitude", "map-duplication", "map-kept"):
            expect(page.locator(f"#{elem_id} .js-plotly-plot")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#answers")).to_contain_text("full (all tokens)", timeout=TIMEOUT_MS)
    return time.perf_counter() - start


def measure(repeats: int = 5) -> dict:
    """Seconds per (model, event): lists of samples, plus the visual-token counts seen."""
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from dualview.engine.tiny import build_tiny
    from dualview.shapes.world import write_examples

    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"error: chromium is missing at {CHROMIUM} (apt-get install -y chromium).")
    repeats = min(repeats, (len(PROMPTS) - 1) // 2)
    root = Path(tempfile.mkdtemp(prefix="dualview-browser-"))
    write_examples(root / "examples")
    onevision = str(build_tiny("llava_onevision", root / "ov", geometry="real"))
    picture = root / "noise-1920x1080.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)).save(picture)
    samples: dict = {}
    tokens: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for name, model in (("builtin", "builtin"), ("llava_onevision", onevision)):
            demo, url = _serve(model, root / "examples" if name == "builtin" else root / "no-examples")
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1250})
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(url)
                if name == "builtin":  # the page opens on an example, already analysed
                    expect(page.locator("#status")).to_contain_text("keeps", timeout=TIMEOUT_MS)
                else:
                    page.locator("#input-image input[type=file]").set_input_files(str(picture))
                shown = page.locator("#status").inner_text()
                prompts = [p for p in PROMPTS if p not in shown]  # a new prompt each time, never the one shown
                runs = [_run(page, prompt, curves=False) for prompt in prompts[:repeats]]
                curves = [_run(page, prompt, curves=True) for prompt in prompts[repeats:2 * repeats]]
                page.get_by_role("tab", name="Dual-form maps").click()
                status = page.locator("#status").inner_text()
                tokens[name] = int(status.split(" of ")[1].split(" ")[0])
                moves = []
                for i in range(repeats + 1):  # the first warms up
                    moves.append(_budget_move(page, 0.2 + 0.4 * (i % 2)))
                    _settle(page, demo)
                moves = moves[1:]
                samples[name] = {"run": runs, "curves": curves, "budget": moves}
                print(f"{name}: {tokens[name]} visual tokens, Run median {statistics.median(runs):.2f} s, "
                      f"budget move median {statistics.median(moves):.2f} s", flush=True)
                page.close()
            finally:
                demo.close()
        browser.close()
    return {"samples": samples, "visual_tokens": tokens}


def markdown(record: dict) -> str:
    lines = [f"`{record['command']}` — {record['date']}, {record['machine']}; Chromium {record['chromium']} "
             f"(headless) on the same machine; medians over {record['repeats']} repetitions, from the click to "
             "the page showing the result.", "",
             "| model | visual tokens | budget slider → kept map redrawn, s | target | Run → maps, status and "
             "answers shown, s | target | Run → error curves drawn (their tab open), s | target |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in record["results"].items():
        def target(event):
            value = TARGETS.get((name, event))
            return "—" if value is None else f"≤ {value:g} s"

        lines.append(f"| {name} | {row['visual_tokens']} | {row['budget']['median']:.2f} | {target('budget')} | "
                     f"{row['run']['median']:.2f} | {target('run')} | {row['curves']['median']:.2f} | "
                     f"{target('curves')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    import platform
    import subprocess

    import torch

    from dualview.bench import common

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5,
                        help=f"repetitions of each event (at most {(len(PROMPTS) - 1) // 2})")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= (len(PROMPTS) - 1) // 2:
        common.fail(f"--repeats must lie in 1..{(len(PROMPTS) - 1) // 2}, not {args.repeats}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    measured = measure(args.repeats)
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    results = {name: {"visual_tokens": measured["visual_tokens"][name],
                      **{event: {"median": statistics.median(values), "samples": values}
                         for event, values in events.items()}}
               for name, events in measured["samples"].items()}
    record = {"suite": "browser", "command": "python -m dualview.bench browser " + " ".join(argv or []),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": common.machine(),
              "platform": platform.platform(), "chromium": version.replace("Chromium ", ""),
              "repeats": args.repeats, "targets": {f"{m} {e}": v for (m, e), v in TARGETS.items()},
              "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "browser.json").write_text(json.dumps(record, indent=1))
    (out / "browser.md").write_text(markdown(record))
    print(f"wrote {out / 'browser.json'} and {out / 'browser.md'}")


if __name__ == "__main__":
    main()
