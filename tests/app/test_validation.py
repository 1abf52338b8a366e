"""The one request validator: every input gives a usable request or one clear sentence."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from dualview.errors import DualviewError
from dualview.validation import MAX_SIDE, load_image, parse_budget, validate_request


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


def test_large_images_are_downscaled_keeping_the_aspect():
    image = load_image(np.zeros((100, 5000, 3), dtype=np.uint8))
    assert image.size == (MAX_SIDE, 41)


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


@pytest.mark.parametrize("budget, n, expected", [
    (1, 196, 1), (196, 196, 196), (0.353, 196, 69), (1.0, 196, 196), (69.0, 196, 69), ("69", 196, 69),
    ("35.3%", 196, 69), ("0.111", 196, 22), (np.int64(5), 196, 5), (0.001, 196, 1),
])
def test_budgets_resolve_to_counts(budget, n, expected):
    assert parse_budget(budget, n) == expected


@pytest.mark.parametrize("budget", [0, -3, float("nan"), math.inf, 1.5, 197, "lots", "150%", True, None, [3]])
def test_bad_budgets_are_refused(budget):
    with pytest.raises(DualviewError):
        parse_budget(budget, 196)


def test_request_fields_are_checked_with_the_model_limits():
    image = Image.new("RGB", (8, 8))
    request = validate_request(image, "  how many objects are there?  ", "22.2%", method="fastv", layer="3",
                               b0=4.0, growth=3, lam=2, num_visual=196, num_layers=8)
    assert (request.prompt, request.budget, request.method, request.layer, request.b0, request.growth, request.lam) \
        == ("how many objects are there?", 44, "fastv", 3, 4, 3, 2.0)
    assert validate_request(image, "q", 3, layer=" ").layer is None
    for kwargs, message in [
        (dict(prompt=" \n"), "prompt is empty"), (dict(prompt="x" * 5000), "more than the limit"),
        (dict(method="nope"), "Unknown method"), (dict(layer=8), "from 0 to 7"), (dict(layer="1.5"), "whole number"),
        (dict(b0=0), "b₀"), (dict(b0=2.5), "b₀"), (dict(growth=99), "growth"), (dict(lam=float("nan")), "λ"),
        (dict(lam=-0.1), "λ"),
    ]:
        args = dict(prompt="q", method="iwp", layer=None) | kwargs
        with pytest.raises(DualviewError, match=message):
            validate_request(image, args.pop("prompt"), 3, num_layers=8, **args)
