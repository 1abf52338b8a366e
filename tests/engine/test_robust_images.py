"""Issue 17, kinds 3 and 4: extreme aspect ratios, both orientations, every family.

Each image either runs, with a geometry that matches what the model packs (``prepare`` compares the
geometry's slot count with the processor's image tokens, and the model itself refuses image
features that do not fill its image tokens), or is refused with one sentence before any model or
processor work; the independent reference for a refusal is the family's own image processor, which
must refuse exactly the same images. Also at the real LLaVA-NeXT and LLaVA-OneVision geometries
(336 px / 5 pinpoints; 384 px / 6 x 6 pinpoints, anyres_max_9) with tiny widths, where LLaVA-NeXT's
crop rows vanish near 100 : 1 (e.g. 2048 x 21).
"""

import functools
import os
import tempfile

import pytest

import dualview
from dualview import cli
from dualview.engine.tiny import build_tiny
from dualview.errors import DualviewError
from dualview.figures.maps import panels
from tests.engine_tiny import FAMILIES, PROMPT, gradient_image, tiny_dir, tiny_session

SHORT_SIDES = (1, 3, 10, 13, 21, 40)


def thin_sizes(long_sides=(2048, 300)) -> list[tuple[int, int]]:
    """(width, height) pairs of thin images in both orientations, and the 200 : 1 boundary."""
    sizes = [(long, short) for long in long_sides for short in SHORT_SIDES] + [(200, 1), (201, 1), (400, 2), (401, 2)]
    return sizes + [(h, w) for w, h in sizes]


def processor_refuses(session, image) -> bool:
    try:
        session.processor.image_processor(images=[image], return_tensors="pt")
    except ValueError:
        return True
    return False


def check_runs(session, image) -> None:
    """The model runs on ``image`` and every visual token has a box inside the image."""
    prepared = session.prepare(image, PROMPT)
    geometry = prepared.geometry
    assert geometry.num_visual == prepared.visual_positions.numel() > 0
    width, height = image.size
    boxes = geometry.boxes
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    for view, (_, (rows, cols)) in enumerate(geometry.views):  # every view a full raster grid
        members = geometry.view_indices(view)
        assert members.numel() == rows * cols > 0
        assert sorted(zip(geometry.rows[members].tolist(), geometry.cols[members].tolist())) == \
            [(r, c) for r in range(rows) for c in range(cols)]
    assert sum(rows * cols for _, (rows, cols) in geometry.views) == geometry.num_visual
    assert len(panels(geometry.to_dict())) == len(geometry.views)  # the maps can draw it
    session.answer(session.prepare(image, PROMPT), keep=[0], layer=0, max_new_tokens=1)  # the model checks its token count


def check_refused_before_work(session, image) -> str:
    def refuse(*args, **kwargs):
        raise AssertionError("processor or model work happened")

    processor_call, session.processor.image_processor.preprocess = session.processor.image_processor.preprocess, refuse
    handle = session.model.register_forward_pre_hook(refuse)
    try:
        with pytest.raises(DualviewError) as error:
            session.prepare(image, PROMPT)
    finally:
        handle.remove()
        session.processor.image_processor.preprocess = processor_call
    message = str(error.value)
    assert "\n" not in message and message.endswith(".") and f"{image.width}x{image.height}" in message
    return message


@pytest.mark.parametrize("family", FAMILIES)
def test_thin_images_run_or_are_refused_as_the_processor_would(family):
    session = tiny_session(family)
    refused = []
    for width, height in thin_sizes():
        image = gradient_image(width, height)
        if processor_refuses(session, image):
            check_refused_before_work(session, image)
            refused.append((width, height))
        else:
            check_runs(session, image)
    limit = getattr(session.adapter, "MAX_ASPECT_RATIO", None)
    expected = [(w, h) for w, h in thin_sizes() if limit and max(w, h) / min(w, h) > limit]
    assert refused == expected


@functools.cache
def real_geometry_dir(family: str) -> str:
    """``family``'s model with the public checkpoint's vision geometry (``build_tiny(..., geometry="real")``)."""
    return str(build_tiny(family, os.path.join(tempfile.mkdtemp(prefix="dualview-real-geometry-"), family),
                          geometry="real"))


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_thin_images_at_the_real_anyres_geometry(family):
    session = dualview.load(real_geometry_dir(family), device="cpu")
    assert session.adapter.family == family
    for short in (1, 10, 20, 21, 22, 60):
        for width, height in ((2048, short), (short, 2048)):
            check_runs(session, gradient_image(width, height))


def test_cli_gives_the_api_sentence_for_a_processor_limit(tmp_path, capsys):
    family = "qwen2_vl"
    image = gradient_image(300, 1)
    path = tmp_path / "thin.png"
    image.save(path)
    message = check_refused_before_work(tiny_session(family), image)
    assert "200:1" in message
    capsys.readouterr()
    code = cli.main(["answer", "--model", tiny_dir(family), "--image", str(path), "--prompt", PROMPT])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err == f"dualview: error: {message}\n"
    for family in ("llava_next", "llava_onevision"):  # the ZeroDivisionError of the issue, through the CLI
        code = cli.main(["answer", "--model", tiny_dir(family), "--image", str(path), "--prompt", PROMPT,
                         "--budget", "1", "--max-new-tokens", "1"])
        assert code == 0, capsys.readouterr().err
