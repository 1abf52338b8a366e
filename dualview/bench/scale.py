"""Real scale: the engine and every app event at the token counts of the models people bring.

``python -m dualview.bench scale [--families llava_onevision,...] [--sizes 336x336,1920x1080] [--repeats 3]``

For each family, a model with the vision and processor geometry of its public checkpoint and tiny
widths (``dualview.engine.tiny.build_tiny(family, dir, geometry="real")``, 8 decoder layers) is
built offline; for each image size (a random-noise picture, the worst case for the compressed
display image):

Qwen2.5-VL also gets two photo-like JPEGs at the resolution its own processor takes (nothing is
downscaled before it): a 4032 × 3024 phone photo (15 552 tokens) and 3584 × 3584 (16 384 tokens,
its default ``max_pixels``); a noise PNG that large would exceed the 20 MB upload limit.

- **engine**: ``prepare`` + ``analyze`` (one forward to layer 4), one IWP selection at 11.1 %, the
  full and the pruned answer (8 new tokens): seconds, medians over ``--repeats``;
- **app**: the app launched in this process and driven through ``gradio_client`` as a browser
  would: Run, a budget move, a method change, a patch click, one PC-MMR step, opening classic MMR,
  one classic step, the curves, compare, export: seconds (medians) and the bytes each event sends
  back (the JSON of its outputs, files included);
- **memory**: the process's peak resident set size after each size (``ru_maxrss``).

Targets (issue 15, this 2-core CPU, OneVision geometry at 1920 × 1080, about 7 200 tokens): Run
within 2× the engine's own time; each update ≤ 1 s median; each event ≤ 5 MB and each map ≤ 1 MB;
peak memory ≤ 4 GB. Writes ``results/scale.json`` and ``results/scale.md`` (the README's table).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = ((336, 336), (1280, 720), (1920, 1080))
PHONE = (4032, 3024)
LARGEST = (3584, 3584)
PHOTOS = (PHONE, LARGEST)
"""Qwen2.5-VL's extra sizes (photo-like JPEGs): a phone photo and its largest default input."""
FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl")
"""The default ``--families``; any family ``build_tiny`` builds (``tiny.FAMILIES`` and ``tiny.GENERIC``) may be named."""
PROMPT = "what color is the circle?"
UPDATE_TARGET_S, EVENT_BYTES, MAP_BYTES, MEMORY_BYTES = 1.0, 5_000_000, 1_000_000, 4 * 1024 ** 3
SEVEN_B = {"heads": 28, "kv_heads": 4, "head_dim": 128, "hidden": 3584, "tokens": 7290}
"""LLaVA-OneVision-7B's decoder (Qwen2-7B: 28 query heads, 4 KV heads of 128, width 3584) at its
largest AnyRes input (7 290 visual tokens)."""


def noise_image(width: int, height: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def photo_image(width: int, height: int, seed: int = 0):
    """A photo-like picture: smooth colour gradients with mild sensor noise (compresses as a JPEG does)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([128 + 100 * np.sin(6 * x), 128 + 100 * np.cos(5 * y), 128 + 60 * np.sin(4 * (x + y))], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


def peak_memory() -> int:
    """Peak resident set size of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sent_bytes(value) -> int:
    """Bytes an event's outputs take on the wire: their JSON, plus the files they point to."""
    if isinstance(value, (list, tuple)):
        return sum(sent_bytes(v) for v in value)
    if isinstance(value, dict) and "plot" in value:
        return len(value["plot"])
    if isinstance(value, str) and os.path.isfile(value):
        return os.path.getsize(value)
    if isinstance(value, dict) and isinstance(value.get("path"), str) and os.path.isfile(value["path"]):
        return os.path.getsize(value["path"])
    return len(json.dumps(value, default=str))


def kept_state_bytes(heads: int, kv_heads: int, head_dim: int, hidden: int, tokens: int) -> int:
    """Bytes dualview keeps per analysis beyond the model, for ``tokens`` sequence positions: the
    analysis layer's q (before and after RoPE), k (both) and v in float32, the language model's input
    embeddings (float32, for DivPrune / CDPruner), and the implicit weight's per-token float64
    arrays (candidates' keys, values, ``K_CC V_C`` and ``K_CT V_T``). No N × N matrix is kept."""
    projections = 4 * tokens * head_dim * (2 * heads + 3 * kv_heads)
    embeddings = 4 * tokens * hidden
    implicit = 8 * tokens * head_dim * kv_heads * 4
    return projections + embeddings + implicit


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def engine_times(model_dir: str, image, repeats: int) -> dict:
    """Seconds of the engine's own work, medians over ``repeats`` (a fresh analysis each time)."""
    import dualview
    from dualview.methods import get_method

    session = dualview.load(model_dir, device="cpu")
    samples: dict = {"analyse": [], "select": [], "full_answer": [], "pruned_answer": []}
    for _ in range(repeats):
        session._analyses.clear()
        seconds, prepared = _timed(lambda: session.prepare(image, PROMPT))
        more, analysis = _timed(lambda: session.analyze(prepared))
        samples["analyse"].append(seconds + more)
        seconds, selection = _timed(lambda: get_method("iwp").select(analysis, 0.111))
        samples["select"].append(seconds)
        samples["full_answer"].append(_timed(lambda: session.answer(prepared, max_new_tokens=8))[0])
        samples["pruned_answer"].append(_timed(lambda: session.answer(prepared, keep=selection.kept,
                                                                      max_new_tokens=8))[0])
    result = {key: statistics.median(values) for key, values in samples.items()}
    result["total"] = sum(result.values())
    result["visual_tokens"] = analysis.num_visual
    result["sequence"] = analysis.prepared.length
    return result


def app_events(url: str, model_dir: str, image_path: str, repeats: int) -> dict:
    """Seconds (medians) and bytes per app event, through gradio_client."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    samples: dict = {}

    def record(name: str, fn):
        seconds, value = _timed(fn)
        entry = samples.setdefault(name, {"seconds": [], "bytes": 0, "largest_output": 0})
        entry["seconds"].append(seconds)
        entry["bytes"] = sent_bytes(value)
        entry["largest_output"] = max(sent_bytes(v) for v in value) if isinstance(value, (list, tuple)) \
            else sent_bytes(value)
        return value

    for _ in range(repeats):
        out = record("run", lambda: client.predict(handle_file(image_path), PROMPT, model_dir, "iwp", "11.1%", "",
                                                   api_name="/run"))
        num_visual = next(v for v in out if isinstance(v, dict) and "num_visual" in v)["num_visual"]
        record("budget", lambda: client.predict("iwp", max(1, round(0.222 * num_visual)), api_name="/update"))
        record("method", lambda: client.predict("fastv", max(1, round(0.222 * num_visual)), api_name="/update"))
        record("patch click", lambda: client.predict(num_visual // 2, "inspect", api_name="/inspect"))
        record("pcmmr step", lambda: client.predict(1, api_name="/pcmmr_step"))
        record("classic open", lambda: client.predict(api_name="/classic_view"))
        record("classic step", lambda: client.predict(1, api_name="/classic_step"))
        record("curves", lambda: client.predict(False, api_name="/curves"))
        record("compare", lambda: client.predict(["iwp", "fastv", "divprune"], api_name="/compare"))
        files, _ = record("export", lambda: client.predict(api_name="/export"))
        samples["export"]["html"] = next(sent_bytes(f) for f in files if str(f.get("path", f) if isinstance(f, dict)
                                                                            else f).endswith(".html"))
    return {name: {"median_s": statistics.median(e["seconds"]), "bytes": e["bytes"],
                   "largest_output": e["largest_output"], **({"html": e["html"]} if "html" in e else {})}
            for name, e in samples.items()}


def measure(families=FAMILIES, sizes=SIZES, repeats: int = 1, phone: bool = True) -> list[dict]:
    """One row per (family, image size)."""
    import socket

    from dualview.app.launch import create
    from dualview.engine.tiny import build_tiny

    root = Path(tempfile.mkdtemp(prefix="dualview-scale-"))
    models = {f: str(build_tiny(f, root / f, geometry="real")) for f in families}
    demo, launch_kwargs = create(list(models.values()), examples_dir=root / "no-examples")  # every family offered
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    rows = []
    try:
        for family in families:
            family_sizes = list(sizes) + (list(PHOTOS) if phone and family == "qwen2_5_vl" else [])
            for width, height in family_sizes:
                image = noise_image(width, height)
                path = root / f"{width}x{height}.png"
                if (width, height) in PHOTOS:  # a phone's photo is a JPEG (noise as PNG exceeds the upload limit)
                    image = photo_image(width, height)
                    path = path.with_suffix(".jpg")
                    image.save(path, quality=90)
                else:
                    image.save(path)
                engine = engine_times(models[family], image, repeats)
                app = app_events(f"http://127.0.0.1:{port}/", models[family], str(path), repeats)
                rows.append({"family": family, "image": f"{width}x{height}", **{f"engine_{k}": v for k, v in engine.items()},
                             "app": app, "peak_memory_bytes": peak_memory()})
                print(f"{family} {width}x{height}: {engine['visual_tokens']} tokens, engine {engine['total']:.1f} s, "
                      f"Run {app['run']['median_s']:.1f} s, budget move {app['budget']['median_s']:.2f} s", flush=True)
    finally:
        demo.close()
    return rows


def markdown(rows: list[dict], record: dict) -> str:
    """The README table: tokens, engine time, Run, the updates, bytes per event, memory."""
    updates = ("budget", "method", "patch click", "pcmmr step", "classic step")
    lines = [f"`{record['command']}` — {record['date']}, {record['machine']}; medians over {record['repeats']} "
             "repetition(s); random-noise images (the largest display JPEG); updates: budget move, method change, "
             "patch click, one PC-MMR step, one classic-MMR step.", "",
             "| family | image | visual tokens | engine s | Run s | Run / engine | slowest update s | curves s | "
             "classic open s | Run MB | largest update MB | largest map MB | export MB (HTML) | peak memory GB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def html(export: dict) -> str:  # runs before the HTML was reported apart lack it
        return f"{export['html'] / 1e6:.1f}" if "html" in export else "—"

    for r in rows:
        app = r["app"]
        slowest = max(app[u]["median_s"] for u in updates)
        lines.append(f"| {r['family']} | {r['image']} | {r['engine_visual_tokens']} | {r['engine_total']:.1f} | "
                     f"{app['run']['median_s']:.1f} | {app['run']['median_s'] / r['engine_total']:.2f} | {slowest:.2f} | "
                     f"{app['curves']['median_s']:.1f} | {app['classic open']['median_s']:.1f} | "
                     f"{app['run']['bytes'] / 1e6:.2f} | {max(app[u]['bytes'] for u in updates) / 1e6:.2f} | "
                     f"{max(e['largest_output'] for n, e in app.items() if n != 'export') / 1e6:.2f} | "
                     f"{app['export']['bytes'] / 1e6:.1f} ({html(app['export'])}) | "
                     f"{r['peak_memory_bytes'] / 1024 ** 3:.2f} |")
    seven = record["seven_b_kept_bytes"]
    lines += ["", "Export writes files: the JSON of everything shown, the PC-MMR animation as one offline HTML "
              "page (the animation once, plotly.js gzip-compressed inside; its size in brackets) and, for an "
              "upload, the picture as PNG (the noise pictures are most of the total). Animation steps are counted as an API "
              "client gets them (a whole figure); in the page they send nothing (the steps live in the figure a "
              "selection sends). The peak memory is the whole process's (the app, the benchmark and every model "
              "loaded so far).", "",
              f"Kept per analysis for LLaVA-OneVision-7B ({SEVEN_B['heads']} query heads, {SEVEN_B['kv_heads']} KV "
              f"heads of {SEVEN_B['head_dim']}, width {SEVEN_B['hidden']}) at {SEVEN_B['tokens']} tokens: the analysis "
              f"layer's projections, the input embeddings and the implicit weight's per-token products, no N × N matrix: "
              f"{seven / 1e6:.0f} MB (`kept_state_bytes`)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    import platform

    import torch

    from dualview.bench import common

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES))
    parser.add_argument("--no-phone", action="store_true",
                        help="skip Qwen2.5-VL's 4032 x 3024 and 3584 x 3584 photos (15 552 and 16 384 tokens)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    from dualview.engine.tiny import FAMILIES as BUILT, GENERIC

    unknown = set(families) - set(BUILT + GENERIC)
    if unknown:
        common.fail(f"Unknown families {sorted(unknown)}; choose from {', '.join(BUILT + GENERIC)}.")
    try:
        sizes = tuple(tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",") if s.strip())
    except ValueError:
        common.fail(f"--sizes must look like 336x336,1920x1080, not {args.sizes!r}.")
    rows = measure(families, sizes, args.repeats, phone=not args.no_phone)
    record = {"suite": "scale", "command": "python -m dualview.bench scale " + " ".join(argv or []),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": common.machine(),
              "platform": platform.platform(), "repeats": args.repeats,
              "seven_b_kept_bytes": kept_state_bytes(**SEVEN_B),
              "targets": {"run_over_engine": 2.0, "update_s": UPDATE_TARGET_S, "event_bytes": EVENT_BYTES,
                          "map_bytes": MAP_BYTES, "memory_bytes": MEMORY_BYTES}, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(record, indent=1))
    (out / "scale.md").write_text(markdown(rows, record))
    print(f"wrote {out / 'scale.json'} and {out / 'scale.md'}")


if __name__ == "__main__":
    main()
