"""Grow an exported shapes-world model deeper without changing what it computes.

New layers are copies of an existing layer whose residual outputs are zeroed (the attention's
output projection and the MLP's down projection, weights and biases), so each new layer adds an
exact zero to the residual stream: the grown model gives exactly the same logits as the one it was
grown from, and training starts from that function with more depth to use. Copying a neighbour
rather than drawing fresh weights gives the new layer's queries, keys and MLP input features that
already fit its input; at the first step only its zeroed projections receive a gradient. This is
growth in the spirit of Net2DeeperNet (Chen, Goodfellow & Shlens 2016, "Net2Net: Accelerating
Learning via Knowledge Transfer"); copying a block and zeroing its output projections is LLaMA Pro's
block expansion (Wu et al. 2024).

- vision tower: ``--vision-layers N`` appends copies of the last encoder layer up to N layers
  (the projector reads the last layer, ``vision_feature_layer=-1``, so it reads the grown stack);
- decoder: ``--text-insert L:K`` inserts K copies of decoder layer L right after it, so layers
  0..L keep their indices while the later ones move up by K. A ``--*-layers`` training option or an
  ``--evidence`` layer up to L still names the same layer, but it now has more layers after it
  (``--evidence 4`` prunes 6 of 10 layers instead of 4 of 8).

The grown model is written in float32 (twice the size of an fp16 export), ready for ``--init``::

    python -m dualview.shapes.grow runs/stage15/export runs/grown --vision-layers 6 --text-insert 5:2
    python -m dualview.shapes.train --run runs/stage26 --init runs/grown ...
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace

from .model import ModelSize, build_model

VISION = "model.vision_tower.encoder.layers."
TEXT = "model.language_model.layers."
# the residual outputs of each block: zeroed in a new layer so that it starts as the identity
ZEROED = {VISION: ("self_attn.out_proj.", "mlp.fc2."), TEXT: ("self_attn.o_proj.", "mlp.down_proj.")}


def layer_sources(old: int, new: int, insert_after: int | None = None) -> list[tuple[int, bool]]:
    """For each of ``new`` layers, (index of the old layer it copies, whether it is a new one).

    ``insert_after=None`` appends copies of the last layer; an index ``L`` inserts them after layer L.
    Raises ValueError if ``new < old`` or ``L`` is not a layer of the old stack.
    """
    if new < old:
        raise ValueError(f"{new} layers asked for, fewer than its {old} (growing cannot remove layers)")
    at = old - 1 if insert_after is None else insert_after
    if not 0 <= at < old:
        raise ValueError(f"layer {at}: it has layers 0 to {old - 1}")
    added = new - old
    return ([(i, False) for i in range(at + 1)] + [(at, True)] * added
            + [(i, False) for i in range(at + 1, old)])


def growth_plan(size: ModelSize, vision_layers: int, text_after: int, text_added: int):
    """(grown ModelSize, {layer-key prefix: :func:`layer_sources` plan}); ValueError if impossible."""
    grown = replace(size, vision_layers=vision_layers, text_layers=size.text_layers + text_added)
    if grown == size:
        raise ValueError(f"nothing to grow: ask for more than {size.vision_layers} vision layers "
                         "or insert decoder layers (--text-insert L:K with K > 0)")
    try:
        vision_plan = layer_sources(size.vision_layers, vision_layers)
    except ValueError as exc:
        raise ValueError(f"vision tower: {exc}") from None
    try:
        text_plan = layer_sources(size.text_layers, grown.text_layers, text_after)
    except ValueError as exc:
        raise ValueError(f"decoder: {exc}") from None
    return grown, {VISION: vision_plan, TEXT: text_plan}


def grow_state(state: dict, plans: dict) -> dict:
    """The grown state dict: every layer placed as :func:`growth_plan`'s ``plans`` say, the new ones
    copied from their source with their residual outputs zeroed; ``state`` is the state dict of the
    model the plans were made for (``build_model(size)``)."""
    out = {k: v for k, v in state.items() if not k.startswith((VISION, TEXT))}
    for prefix, plan in plans.items():
        for j, (i, is_new) in enumerate(plan):
            src = f"{prefix}{i}."
            for key, value in state.items():
                if key.startswith(src):
                    rest = key[len(src):]
                    zero = is_new and rest.startswith(ZEROED[prefix])
                    out[f"{prefix}{j}.{rest}"] = value.clone().zero_() if zero else value.clone()
    return out


def parse_insert(text: str) -> tuple:
    """``--text-insert`` value ``L:K`` -> (L, K); raises ValueError on anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--text-insert {text!r}: expected LAYER:COUNT, e.g. 5:2")
    return int(m[1]), int(m[2])


def main(argv=None) -> None:
    from .train import check_init, check_new_folder, export, init_size, init_weights

    ap = argparse.ArgumentParser(prog="python -m dualview.shapes.grow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="exported model to grow (a folder with config.json)")
    ap.add_argument("out", help="new folder for the grown model (float32)")
    ap.add_argument("--vision-layers", type=int, default=None, metavar="N",
                    help="vision encoder depth after growing (default: unchanged)")
    ap.add_argument("--text-insert", default="0:0", metavar="L:K",
                    help="insert K copies of decoder layer L right after it (default: none)")
    args = ap.parse_args(argv)
    check_init(args.source, "SOURCE")
    size = init_size(args.source)
    try:
        check_new_folder(args.out, (args.source,), "OUT")
        after, added = parse_insert(args.text_insert)
        vision = size.vision_layers if args.vision_layers is None else args.vision_layers
        grown, plans = growth_plan(size, vision, after, added)  # refused before any weights load
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    model = build_model(grown)
    model.load_state_dict(grow_state(init_weights(args.source), plans))
    export(model, args.out, grown, dtype="float32")
    print(f"grown {args.source} -> {args.out}: vision {size.vision_layers} -> {grown.vision_layers} layers, "
          f"decoder {size.text_layers} -> {grown.text_layers} layers")


if __name__ == "__main__":
    main()
