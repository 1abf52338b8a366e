"""Image decoding (dualview.images.load_image): every mode and format the README names, or one sentence."""

import io

import numpy as np
import pytest
from PIL import Image

from dualview.errors import DualviewError
from dualview.images import load_image


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(mode):
    image = load_image(Image.new(mode, (7, 5)))
    assert image.mode == "RGB" and image.size == (7, 5)


def test_transparency_is_composited_on_white():
    image = load_image(Image.new("RGBA", (2, 2), (255, 0, 0, 0)))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_images_are_rescaled_not_clipped():
    pixels = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    image = load_image(Image.fromarray(pixels, "I;16"))
    assert [image.getpixel(p)[0] for p in ((0, 0), (1, 0), (0, 1), (1, 1))] == [0, 64, 128, 255]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_encoded_formats_decode(fmt):
    image = load_image(encoded(Image.new("RGB", (9, 4), (10, 200, 30)), fmt))
    assert image.size == (9, 4) and image.mode == "RGB"


def test_exif_orientation_is_applied():
    original = Image.new("RGB", (6, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    assert load_image(encoded(original, "JPEG", exif=exif)).size == (3, 6)


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buffer.getvalue()).getpixel((0, 0))[0] > 200


def test_large_images_keep_their_resolution_for_the_models_processor():
    """Issue 15 item 3: no downscaling here (Qwen2.5-VL's processor takes up to 12.8 MP); only the
    bomb limit refuses, with one sentence."""
    image = load_image(np.zeros((100, 5000, 3), dtype=np.uint8))
    assert image.size == (5000, 100)
    photo = Image.new("RGB", (4032, 3024), (30, 90, 200))
    assert load_image(encoded(photo, "JPEG")).size == (4032, 3024)
    with pytest.raises(DualviewError, match="more than the limit of 64 megapixels"):
        load_image(np.zeros((8001, 8000), dtype=np.uint8))


@pytest.mark.parametrize("source, message", [
    (b"not an image at all", "not a readable image"),
    (encoded(Image.new("RGB", (64, 64)), "PNG")[:60], "not a readable image"),
    (Image.new("RGB", (0, 4)), "empty"),
    (None, "No image"),
    (np.zeros((3, 3, 7)), "must be"),
    ("/nonexistent/picture.png", "No image file"),
    (12, "not int"),
])
def test_bad_images_are_refused_with_a_sentence(source, message):
    with pytest.raises(DualviewError, match=message):
        load_image(source)


def test_decompression_bombs_are_refused_before_decoding():
    header = encoded(Image.new("1", (9000, 9000)), "PNG")  # 81 megapixels, a few kB on disk
    with pytest.raises(DualviewError, match="megapixels"):
        load_image(header)
