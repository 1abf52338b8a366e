"""Evaluate a shapes-world VLM on a held-out set with greedy decoding, per question type.

    python -m dualview.shapes.evaluate --n 2000 --seed 12345 [--model assets/shapes-vlm]
    python -m dualview.shapes.evaluate --n 300 --plain 4    # the same scenes drawn plainly at 4x size

Each question goes through the public path: processor (image + ``format_prompt(question)``) then
``model.generate`` (greedy), exactly as the app asks it. The held-out set is
``world.heldout_set(n, seed)``, a stream the training never draws from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from . import world
from .model import BUILTIN_DIR


def run_eval(model, processor, samples, progress: bool = False) -> dict:
    """Accuracy per question type and overall, plus mean latency (s) per question."""
    from tqdm import tqdm

    from .model import answer, normalize_answer

    hits: dict = {}
    t0 = time.perf_counter()
    for s in tqdm(samples, disable=not progress, desc="eval"):
        pred = normalize_answer(answer(model, processor, s.image, s.question))
        hits.setdefault(s.qtype, []).append(pred == s.answer)
    dt = (time.perf_counter() - t0) / max(1, len(samples))
    acc = {t: sum(v) / len(v) for t, v in sorted(hits.items(), key=lambda kv: world.QUESTION_TYPES.index(kv[0]))}
    counts = {t: len(v) for t, v in hits.items()}
    acc["overall"] = sum(sum(v) for v in hits.values()) / max(1, len(samples))
    return {"accuracy": acc, "counts": counts, "seconds_per_question": dt}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(BUILTIN_DIR))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=12345, help="held-out seed (training never uses this stream)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--plain", type=int, default=None, metavar="SCALE",
                    help="redraw every scene with world.render_plain at SCALE x the size (a stand-in for "
                         "scenes drawn by hand) and ask about that image instead")
    ap.add_argument("--json", default=None, help="also write the result to this file")
    args = ap.parse_args(argv)
    if args.plain is not None and args.plain < 1:
        ap.error(f"--plain {args.plain}: the scale must be a whole number of at least 1")

    import torch

    from .model import load_builtin

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, processor = load_builtin(args.model, dtype=getattr(torch, args.dtype))
    load_s = time.perf_counter() - t0
    samples = world.heldout_set(args.n, args.seed)
    if args.plain:
        samples = [dataclasses.replace(s, image=world.render_plain(s.scene, args.plain)) for s in samples]
    res = run_eval(model, processor, samples, progress=True)
    res.update({"model": args.model, "n": args.n, "seed": args.seed, "dtype": args.dtype, "load_seconds": load_s,
                "plain_scale": args.plain})
    drawn = f", drawn plainly at {args.plain}x" if args.plain else ""
    print(f"held-out seed {args.seed}, {args.n} questions{drawn}, greedy, {args.dtype}")
    for t, a in res["accuracy"].items():
        n = res["counts"].get(t, args.n)
        print(f"  {t:16s} {100 * a:6.2f} %  (n={n})")
    print(f"load {load_s:.2f} s, {1000 * res['seconds_per_question']:.0f} ms per question (image -> answer)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
