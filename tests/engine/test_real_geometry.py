"""Real-geometry models (``build_tiny(..., geometry="real")``): the token counts of the public
checkpoints, boxes that tile the image at those counts, and one forward pass per family.

Expected counts are derived by hand from each checkpoint's published settings (derivations beside
them), not read from the code under test; other sizes are compared with transformers' own processor.
"""

import functools
import os
import tempfile

import pytest
import torch

import dualview
from dualview.engine.tiny import CHECKPOINTS, FAMILIES, GENERIC, build_tiny
from tests.engine_tiny import PROMPT, gradient_image

_ROOT = tempfile.mkdtemp(prefix="dualview-real-")

EXPECTED = {  # family -> {(width, height): (visual tokens, image slots incl. newline tokens)}
    # CLIP 336 / 14 = 24; 24² after the centre crop, at any size.
    "llava": {(384, 384): (576, 576), (1920, 1080): (576, 576)},
    # 384²: best pinpoint 672², 2 × 2 crops of 24², nothing to unpad: 576 + 48² (+ 48 newlines).
    # 1920 × 1080: 672² again; 48 × 48 cells unpadded to int(1080 · 48 / 1920) = 27 rows, padding
    # (48 − 27) // 2 = 10 off each side -> 28 rows: 576 + 28 · 48 (+ 28 newlines).
    "llava_next": {(384, 384): (2880, 2928), (1920, 1080): (1920, 1948)},
    # Measured with the 7B "ov" geometry (stack-notes.md, "At real token counts").
    "llava_onevision": {(384, 384): (1458, 1485), (1920, 1080): (7209, 7269)},
    # Factor 28: 384 -> 392 = 14 · 28; 1080 -> 39 · 28, 1920 -> 69 · 28 (round to the nearest).
    "qwen2_vl": {(384, 384): (196, 196), (1920, 1080): (2691, 2691)},
    "qwen2_5_vl": {(384, 384): (196, 196), (1920, 1080): (2691, 2691)},
    # Factor 32: 384 = 12 · 32; 1080 -> 34 · 32, 1920 = 60 · 32.
    "qwen3_vl": {(384, 384): (144, 144), (1920, 1080): (2040, 2040)},
    # Longest edge to 1456 (384² upsampled), then multiples of 364: 4 × 4 tiles, or 1456 × 819 -> 4 × 3
    # tiles; plus the global image; 13² tokens each.
    "idefics3": {(384, 384): (17 * 169, 17 * 169), (1920, 1080): (13 * 169, 13 * 169)},
    # Longest edge to 2048, multiples of 512: 4 × 4 tiles, or 2048 × 1152 -> 4 × 3; plus global; 8² each.
    "smolvlm": {(384, 384): (17 * 64, 17 * 64), (1920, 1080): (13 * 64, 13 * 64)},
    # 256 soft tokens per image (pan-and-scan off, the checkpoint's default).
    "gemma3": {(384, 384): (256, 256), (1920, 1080): (256, 256)},
    # 384²: one tile, no thumbnail. 16:9 among grids of at most 12 tiles: 2:1 is closest, and the tie
    # between 2 × 1 and 4 × 2 goes to more tiles (the image is larger than half their area): 8 tiles +
    # thumbnail, 16² tokens each.
    "internvl": {(384, 384): (256, 256), (1920, 1080): (9 * 256, 9 * 256)},
    # SigLIP 224 / 14 = 16; 16² over the whole image resized, at any size (generic path).
    "paligemma": {(384, 384): (256, 256), (1920, 1080): (256, 256)},
}
BUILT = FAMILIES + GENERIC


@functools.cache
def real_session(family: str):
    return dualview.load(str(build_tiny(family, os.path.join(_ROOT, family), geometry="real")), device="cpu")


def processor_slots(session, image, **options) -> int:
    """Image placeholder ids in what transformers' own processor makes of (image, prompt)."""
    inputs = session.processor(images=[image], text=[session.adapter.render(PROMPT)], return_tensors="pt", **options)
    return int((inputs["input_ids"][0] == session.model.config.image_token_id).sum())


def assert_views_tile(geometry, width, height, full_image=True):
    """Each view's boxes cover their bounding region exactly once (areas add up, and sample points
    are covered once); that region is the whole image (or, ``full_image=False``, a centred window
    spanning the full width or height)."""
    ys = torch.arange(0.5, height, height / 61, dtype=torch.float64)
    xs = torch.arange(0.5, width, width / 97, dtype=torch.float64)
    points = torch.cartesian_prod(ys, xs)  # [P, 2] (y, x)
    for view in range(len(geometry.views)):
        boxes = geometry.boxes[geometry.view_indices(view)].double()
        x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
        x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
        if full_image:
            assert (float(x0), float(y0)) == (0.0, 0.0)
            assert float(x1) == pytest.approx(width) and float(y1) == pytest.approx(height)
        else:
            assert float(x1 - x0) == pytest.approx(width) or float(y1 - y0) == pytest.approx(height)
            assert float(x0 + x1) == pytest.approx(width, abs=1) and float(y0 + y1) == pytest.approx(height, abs=1)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
        assert float(area) == pytest.approx(float((x1 - x0) * (y1 - y0)), rel=1e-6)
        inside = (points[:, 0] >= y0) & (points[:, 0] < y1) & (points[:, 1] >= x0) & (points[:, 1] < x1)
        p = points[inside]
        count = ((p[:, None, 1] >= boxes[None, :, 0]) & (p[:, None, 1] < boxes[None, :, 2])
                 & (p[:, None, 0] >= boxes[None, :, 1]) & (p[:, None, 0] < boxes[None, :, 3])).sum(dim=1)
        assert bool((count == 1).all())


def test_every_family_names_its_checkpoint():
    assert set(CHECKPOINTS) == set(BUILT) == set(EXPECTED)


@pytest.mark.parametrize("family", BUILT)
def test_token_counts_are_the_checkpoints_and_boxes_tile(family):
    session = real_session(family)
    assert session.num_layers == 8 and session.default_layer == 4
    for size in list(EXPECTED[family]) + [(500, 1200)]:
        image = gradient_image(*size)
        geometry = session.prepare(image, PROMPT).geometry
        if size in EXPECTED[family]:
            assert (geometry.num_visual, int(geometry.is_visual.numel())) == EXPECTED[family][size]
        assert int(geometry.is_visual.numel()) == processor_slots(session, image)
        assert_views_tile(geometry, *size, full_image=family != "llava")


@pytest.mark.parametrize("family", BUILT)
def test_one_forward_pass_at_real_geometry(family):
    session = real_session(family)
    image = gradient_image(160, 120)
    prepared = session.prepare(image, PROMPT)
    analysis = session.analyze(prepared)
    assert analysis.layer == 4
    assert analysis.magnitude.shape == (prepared.geometry.num_visual,)
    assert bool(torch.isfinite(analysis.magnitude).all())


def test_gemma3_pan_and_scan_at_real_geometry():
    """google/gemma-3-4b-it with pan-and-scan on: 1920 × 1080 (ratio 1.78 >= 1.2) gives
    round(1.78) = 2 crops of 960 × 1080 (at least 256 px): the original and 2 crops, 256 tokens each."""
    session = dualview.load(real_session("gemma3").name, device="cpu")
    session.processor.image_processor.do_pan_and_scan = True
    image = gradient_image(1920, 1080)
    geometry = session.prepare(image, PROMPT).geometry
    assert geometry.num_visual == 3 * 256 == processor_slots(session, image, do_pan_and_scan=True)
    assert [name for name, _ in geometry.views] == ["original", "crops"] and geometry.views[1][1] == (16, 32)
    assert_views_tile(geometry, 1920, 1080)
