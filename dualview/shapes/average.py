"""Average two exported shapes-world models weight by weight.

    python -m dualview.shapes.average assets/shapes-vlm runs/stage19/export --weight 0.5 --out DIR

Weight-space ensembling of a model and its fine-tuned continuation (WiSE-FT: Wortsman et al.,
"Robust fine-tuning of zero-shot models", CVPR 2022): every tensor becomes
``(1 - weight) * A + weight * B``, computed in fp32 and stored in A's dtype (fp16 for exports of
``train.export``). The two must be the same architecture: the same ``config.json`` and the same
tensor names and shapes. The other files of the export (config, processor, tokenizer) are
copied from A. Stage 22 of the model card is the mean of stages 12 and 19 (not shipped: on fresh
held-out questions it did not beat stage 12).

Bad input (a missing or unreadable export, different architectures, a weight outside [0, 1], an
``--out`` inside an input or not a new or empty directory) ends with one line on stderr and exit
status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

WEIGHTS = "model.safetensors"


def average_state(a: dict, b: dict, weight: float) -> dict:
    """``{name: (1 - weight) * a[name] + weight * b[name]}``, in fp32, cast back to ``a[name]``'s
    dtype. ``a`` and ``b``: state dicts with the same names and shapes (ValueError otherwise);
    ``weight`` in [0, 1] (ValueError otherwise): 0 gives ``a``, 1 gives ``b``."""
    if not 0.0 <= weight <= 1.0:  # NaN fails too
        raise ValueError(f"weight {weight}: the share of the second model, in [0, 1]")
    if a.keys() != b.keys():
        diff = sorted(a.keys() ^ b.keys())
        raise ValueError(f"not the same architecture: tensor {diff[0]!r} is in only one of the two")
    for name, t in a.items():
        if t.shape != b[name].shape:
            raise ValueError(f"not the same architecture: tensor {name!r} is {tuple(t.shape)} "
                             f"in one and {tuple(b[name].shape)} in the other")
    return {name: ((1 - weight) * t.float() + weight * b[name].float()).to(t.dtype) for name, t in a.items()}


def average_exports(a: str | Path, b: str | Path, weight: float, out: str | Path) -> Path:
    """Write the weighted average of the exports in directories ``a`` and ``b`` to ``out`` (see the
    module docstring). Raises ValueError, with one sentence, on bad input, before writing."""
    from safetensors.torch import load_file, save_file

    from .train import check_new_folder

    a, b, out = Path(a), Path(b), Path(out)
    for d in (a, b):
        if not (d / WEIGHTS).is_file() or not (d / "config.json").is_file():
            raise ValueError(f"{d}: no exported model there ({WEIGHTS} and config.json expected)")
    check_new_folder(out, (a, b), "--out")
    if (a / "config.json").read_bytes() != (b / "config.json").read_bytes():
        raise ValueError(f"{a} and {b}: not the same architecture (their config.json differ)")
    states = []
    for d in (a, b):
        try:
            states.append(load_file(d / WEIGHTS))
        except Exception as e:  # safetensors' errors have no common base class
            raise ValueError(f"{d / WEIGHTS}: not a readable safetensors file ({type(e).__name__})") from None
    state = average_state(*states, weight)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for f in a.iterdir():
            if f.is_file() and f.name != WEIGHTS and f.suffix != ".md":
                shutil.copyfile(f, out / f.name)
        save_file(state, out / WEIGHTS, metadata={"format": "pt"})
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or type(e).__name__})") from None
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="exported model directory (its dtype and files are kept)")
    ap.add_argument("b", help="exported model directory of the same architecture")
    ap.add_argument("--weight", type=float, default=0.5, help="share of B, in [0, 1] (default 0.5: the mean)")
    ap.add_argument("--out", required=True, help="directory to write the averaged export to")
    args = ap.parse_args(argv)
    try:
        out = average_exports(args.a, args.b, args.weight, args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {out} = {1 - args.weight:g} x {args.a} + {args.weight + 0.0:g} x {args.b}")


if __name__ == "__main__":
    main()
