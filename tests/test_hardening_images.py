"""Uploads are decoded by the five formats of the README only (JPEG includes MPO, from phone cameras):
every other format Pillow knows, EPS (which runs Ghostscript) included, is refused with the sentence."""

import io

import pytest
from PIL import Image

from dualview.engine.errors import DualviewError
from dualview.validation import load_image


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
