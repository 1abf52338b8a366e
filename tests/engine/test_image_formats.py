"""Uploads are decoded by the five formats of the README only (JPEG includes MPO, from phone cameras):
every other format Pillow knows, EPS (which runs Ghostscript) included, is refused with the sentence."""

import io

import pytest
from PIL import Image

from dualview.errors import DualviewError
from dualview.images import load_image


def encoded(fmt: str, mode: str = "RGB", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (16, 12), 77 if mode == "L" else (10, 80, 200)).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, mode", [("TIFF", "RGB"), ("ICO", "RGB"), ("TGA", "RGB"), ("PPM", "RGB"),
                                       ("PCX", "RGB"), ("EPS", "RGB"), ("SGI", "RGB"), ("QOI", "RGB")])
def test_other_formats_are_refused(fmt, mode):
    data = encoded(fmt, mode)
    with pytest.raises(DualviewError, match=r"not a readable image \(PNG, JPEG, WebP, BMP or GIF\)"):
        load_image(data)


def test_phone_jpegs_stored_as_mpo_are_read():
    data = encoded("MPO", save_all=True, append_images=[Image.new("RGB", (16, 12))])  # two frames
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert load_image(data).size == (16, 12)


def test_the_python_api_decodes_with_the_same_validator(tmp_path):
    """Session.analyze/answer take the same images as the app and refuse the same ones, same sentence."""
    import numpy as np

    import dualview
    from tests.engine_tiny import tiny_dir

    session = dualview.load(tiny_dir("llava"), device="cpu")
    bomb, notes = tmp_path / "bomb.png", tmp_path / "notes.png"
    Image.new("1", (9000, 9000)).save(bomb)
    notes.write_text("not an image")
    for path in (bomb, notes):
        with pytest.raises(DualviewError) as from_validator:
            load_image(str(path))
        with pytest.raises(DualviewError) as from_session:
            session.prepare(str(path), "what?")
        assert str(from_session.value) == str(from_validator.value)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 65535, (40, 30), dtype=np.uint16), "I;16").save(sixteen)
    by_path = session.prepare(str(sixteen), "what?")
    assert by_path.image_hash == session.prepare(load_image(str(sixteen)), "what?").image_hash
