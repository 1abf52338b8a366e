"""Selection speed: from k and v of one layer to kept indices, per method, N and budget.

``python -m dualview.bench selection [--device cpu|cuda] [--quick]``

Every method computes only the similarities it needs: PC-MMR reads ``|U| × chunk`` blocks of
the duplication, classic MMR one column per step, DivPrune and DPP their full N × N cosine
matrix (as their reference implementations do). Inputs are random with the shapes of a
LLaVA-style layer: Hkv = 4 KV heads, H = 16 query heads, d = 128, 32 text tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dualview import dual_form, selection
from dualview.budget import resolve_budget

TOKEN_COUNTS = (576, 2304, 6272)
BUDGETS = (0.111, 0.222, 0.353)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _methods(q_text, k, v):
    """name -> function(budget) giving kept indices, each starting from q/k/v."""

    from dualview.methods import get_method

    def iwp(budget):
        return selection.pc_mmr(dual_form.magnitude(q_text, k, v), dual_form.DuplicationBlocks(k, v), budget,
                                trace=False, **get_method("iwp").numeric_defaults).kept

    def mmr(budget):
        return selection.mmr(dual_form.magnitude(q_text, k, v), dual_form.DuplicationBlocks(k, v), budget,
                             trace=False, **get_method("mmr").numeric_defaults).kept

    def divprune(budget):
        return selection.max_min_diversity(v.transpose(0, 1).reshape(k.shape[1], -1), budget).kept

    def dpp(budget):
        features = v.transpose(0, 1).reshape(k.shape[1], -1)
        return selection.dpp_map(features, dual_form.magnitude(q_text, k, v), budget).kept

    return {"pc-mmr": iwp, "mmr": mmr, "divprune": divprune, "dpp": dpp}


def run(device: str = "cpu", token_counts=TOKEN_COUNTS, budgets=BUDGETS, repeats: int = 3, methods=None) -> list[dict]:
    """Median wall time (ms) per (method, N, budget) over ``repeats`` runs (one run when it takes > 2 s)."""
    rows = []
    for n in token_counts:
        g = torch.Generator().manual_seed(n)
        q_text = torch.randn(16, 32, 128, generator=g).to(device)
        k = torch.randn(4, n, 128, generator=g).to(device)
        v = torch.randn(4, n, 128, generator=g).to(device)
        for name, select in _methods(q_text, k, v).items():
            if methods and name not in methods:
                continue
            for budget in budgets:
                times = []
                while len(times) < repeats and sum(times) < 2000:  # slow cases run once
                    _synchronize(device)
                    start = time.perf_counter()
                    kept = select(budget)
                    _synchronize(device)
                    times.append(1000 * (time.perf_counter() - start))
                assert kept.numel() == resolve_budget(budget, n)
                rows.append({"method": name, "n": n, "budget": budget, "kept": kept.numel(), "runs": len(times),
                             "ms": statistics.median(times)})
    return rows


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="N = 576 only, one repeat")
    parser.add_argument("--out", default="results", help="folder for selection-<device>.json")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    counts, repeats = ((576,), 1) if args.quick else (TOKEN_COUNTS, 5)
    rows = run(args.device, counts, repeats=repeats)
    print(f"selection time, ms (median of up to {repeats} runs), device {args.device}: {machine()}")
    print(f"{'method':<10}{'N':>6}" + "".join(f"{b * 100:>10.1f}%" for b in BUDGETS))
    for n in counts:
        for name in ("pc-mmr", "mmr", "divprune", "dpp"):
            cells = [r["ms"] for r in rows if r["method"] == name and r["n"] == n]
            print(f"{name:<10}{n:>6}" + "".join(f"{c:>11.1f}" for c in cells))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"suite": "selection", "device": args.device, "machine": machine(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "quick": args.quick, "rows": rows}
    path = out / f"selection-{args.device.split(':')[0]}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
