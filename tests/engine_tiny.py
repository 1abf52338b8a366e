"""Shared helpers for the engine tests: tiny random models of every supported class, built once
per test process into a temporary directory and loaded through ``dualview.load`` (the real path).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm",
            "gemma3", "gemma3_pan_and_scan", "internvl", "paligemma", "shapes")
"""Every adapter family; ``gemma3_pan_and_scan``: the tiny Gemma 3 with its processor's pan-and-scan
turned on (the original image, then 2 crops for the wide and tall test images); ``paligemma``: a
class without an adapter, loaded through the generic path; ``shapes``: the
built-in model's layout (dualview.shapes.model) at its TINY size (SigLIP tower, no chat template,
word-level tokenizer, 2 decoder layers)."""

_ROOT = tempfile.mkdtemp(prefix="dualview-tiny-")
atexit.register(shutil.rmtree, _ROOT, True)


@functools.cache
def tiny_dir(family: str) -> str:
    path = os.path.join(_ROOT, family)
    if family == "shapes":
        from dualview.shapes import model as shapes

        shapes.build_model(shapes.TINY, seed=0).save_pretrained(path)
        shapes.build_processor(shapes.TINY).save_pretrained(path)
    elif family == "gemma3_pan_and_scan":
        from dualview.engine.tiny import build_tiny

        build_tiny("gemma3", path)
        config_path = os.path.join(path, "processor_config.json")
        with open(config_path) as handle:
            config = json.load(handle)
        config["image_processor"]["do_pan_and_scan"] = True
        with open(config_path, "w") as handle:
            json.dump(config, handle)
    else:
        from dualview.engine.tiny import build_tiny

        build_tiny(family, path)
    return path


@functools.cache
def scaled_shapes_dir(scale: float) -> str:
    """The TINY shapes-world model with every matrix multiplied by ``scale`` (seed 0), saved as the
    trainer exports it: at scale 8-12 its greedy answers depend on the image (at the default init
    they do not), so pruning can change them."""
    import torch

    from dualview.shapes.model import TINY, build_model
    from dualview.shapes.train import export

    model = build_model(TINY, seed=0).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(scale)
    return str(export(model, os.path.join(_ROOT, f"shapes-x{scale:g}"), TINY, dtype="float32"))


@functools.cache
def tiny_session(family: str):
    import dualview

    return dualview.load(tiny_dir(family), device="cpu")


def gradient_image(width: int, height: int) -> Image.Image:
    """Red encodes x, green encodes y (both 0..255 across the image); blue is 255 (so that black
    padding added by a processor can be told apart from the image)."""
    x = np.broadcast_to(np.linspace(0, 255, width)[None, :], (height, width))
    y = np.broadcast_to(np.linspace(0, 255, height)[:, None], (height, width))
    blue = np.full((height, width), 255)
    return Image.fromarray(np.stack([x, y, blue], axis=-1).round().astype(np.uint8))


PROMPT = "what color is the circle?"


def analysis_of(session, image, prompt: str = PROMPT, layer: int | None = None):
    """``session.analyze`` of ``session.prepare(image, prompt)`` (the engine's two steps)."""
    return session.analyze(session.prepare(image, prompt), layer=layer)
