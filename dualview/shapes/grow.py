"""Grow an exported shapes-world model deeper without changing what it computes.

New layers are copies of an existing layer whose residual outputs are zeroed (the attention's
output projection and the MLP's down projection, weights and biases), so each new layer adds
exactly nothing at first: the grown model gives the same logits as the one it was grown from
(up to float rounding), and training then starts from that function with more depth to use.
This is the identity-initialised growth of Net2Net (Chen et al. 2016, "Net2DeeperNet"), with
zeroed outputs in place of identity weights because both blocks are residual.

- vision tower: ``--vision-layers N`` appends copies of the last encoder layer up to N layers;
- decoder: ``--text-insert L:K`` inserts K copies of decoder layer L right after it, so layers
  0..L keep their indices (and every ``--*-layers`` option and ``--evidence`` layer up to L keeps
  its meaning) while the later ones move up by K.

Usage::

    python -m dualview.shapes.grow runs/stage15/export runs/grown --vision-layers 6 --text-insert 5:2
    python -m dualview.shapes.train --run runs/stage26 --init runs/grown ...
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace

from .model import ModelSize, build_model

VISION = "model.vision_tower.encoder.layers."
TEXT = "model.language_model.layers."
# the residual outputs of each block: zeroed in a new layer so that it starts as the identity
ZEROED = {VISION: ("self_attn.out_proj.", "mlp.fc2."), TEXT: ("self_attn.o_proj.", "mlp.down_proj.")}


def layer_sources(old: int, new: int, insert_after: int | None = None) -> list:
    """For each of ``new`` layers, (index of the old layer it copies, whether it is a new one).

    ``insert_after=None`` appends copies of the last layer; an index ``L`` inserts them after layer L.
    Raises ValueError if ``new < old`` or ``L`` is not a layer of the old stack.
    """
    if new < old:
        raise ValueError(f"{new} layers: growing cannot remove layers (the model has {old})")
    at = old - 1 if insert_after is None else insert_after
    if not 0 <= at < old:
        raise ValueError(f"layer {at}: the stack has layers 0 to {old - 1}")
    added = new - old
    return ([(i, False) for i in range(at + 1)] + [(at, True)] * added
            + [(i, False) for i in range(at + 1, old)])


def grow_state(state: dict, size: ModelSize, vision_layers: int, text_after: int, text_added: int):
    """(grown ModelSize, state dict) with the new layers copied from their source and outputs zeroed.

    ``state`` is a ``build_model(size)`` state dict; raises ValueError for an impossible growth.
    """
    grown = replace(size, vision_layers=vision_layers, text_layers=size.text_layers + text_added)
    plans = {VISION: layer_sources(size.vision_layers, vision_layers),
             TEXT: layer_sources(size.text_layers, grown.text_layers, text_after)}
    out = {k: v for k, v in state.items() if not k.startswith((VISION, TEXT))}
    for prefix, plan in plans.items():
        for j, (i, new) in enumerate(plan):
            src = f"{prefix}{i}."
            for key, value in state.items():
                if key.startswith(src):
                    rest = key[len(src):]
                    zero = new and rest.startswith(ZEROED[prefix])
                    out[f"{prefix}{j}.{rest}"] = value.clone().zero_() if zero else value.clone()
    return grown, out


def parse_insert(text: str) -> tuple:
    """``--text-insert`` value ``L:K`` -> (L, K); raises ValueError on anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--text-insert {text!r}: expected LAYER:COUNT, e.g. 5:2")
    return int(m[1]), int(m[2])


def main(argv=None) -> None:
    from .train import check_init, export, init_size, init_weights

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="exported model to grow (a folder with config.json)")
    ap.add_argument("out", help="folder for the grown model")
    ap.add_argument("--vision-layers", type=int, default=None, help="vision encoder depth after growing")
    ap.add_argument("--text-insert", default="0:0", help="LAYER:COUNT decoder layers to insert after LAYER")
    args = ap.parse_args(argv)
    check_init(args.source)
    size = init_size(args.source)
    try:
        after, added = parse_insert(args.text_insert)
        vision = size.vision_layers if args.vision_layers is None else args.vision_layers
        grown, state = grow_state(init_weights(args.source), size, vision, after, added)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    model = build_model(grown)
    model.load_state_dict(state)
    export(model, args.out, grown, dtype="float32")
    print(f"grown {args.source} -> {args.out}: vision {size.vision_layers} -> {grown.vision_layers} layers, "
          f"decoder {size.text_layers} -> {grown.text_layers} layers")


if __name__ == "__main__":
    main()
