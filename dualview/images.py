"""Decoding an image that a user gave, safely: the only place pixels enter dualview.

:func:`load_image` turns a PIL image, a path, bytes or an array into an RGB image: any mode,
EXIF orientation applied, the first frame of an animation; refused with one sentence when it is
not an image of :data:`FORMATS`, corrupt, empty or above :data:`MAX_PIXELS`. Nothing is
downscaled here: each model's own processor decides the resolution it sees (Qwen2.5-VL takes a
phone photo at up to 12.8 megapixels, 16 384 tokens; LLaVA-1.5 resizes anything to 336 px), and
the app draws a 512-px copy. The engine, the validator, the CLI and the app all decode here.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dualview.errors import DualviewError

__all__ = ["load_image", "MAX_PIXELS", "FORMATS"]

MAX_PIXELS = 64_000_000
"""Images with more pixels than this are refused before decoding (decompression bombs): 64 MP is
about 200 MB decoded, five times what Qwen2.5-VL's largest input (12.8 MP) needs."""
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
"""The only decoders Pillow may use (JPEG includes MPO, the JPEG of phone cameras); never EPS
(Ghostscript) nor the dozens of rarer formats Pillow would otherwise try on any upload."""

def _to_rgb(image: Image.Image) -> Image.Image:
    """First frame, EXIF orientation applied, any mode to RGB (alpha over white, 16-bit rescaled)."""
    try:
        image.seek(0)
    except (AttributeError, EOFError):
        pass
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        image = Image.fromarray(scaled.round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image.convert("RGB")


def load_image(source) -> Image.Image:
    """Decode ``source`` (PIL image, path, bytes, or ``[H, W]`` / ``[H, W, 3|4]`` uint8 array)
    into an RGB image of at most MAX_PIXELS pixels, at its own resolution, or raise DualviewError."""
    if source is None:
        raise DualviewError("No image was given; upload an image or pick an example.")
    if isinstance(source, Image.Image) and source.mode == "RGB" and 1 <= min(source.size) \
            and source.width * source.height <= MAX_PIXELS and not source.getexif().get(0x0112) and not getattr(source, "is_animated", False):
        return source  # already decoded (e.g. by the validator): nothing to redo
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (1, 3, 4)) or 0 in source.shape:
            raise DualviewError(f"An image array must be [H, W] or [H, W, 3], got shape {tuple(source.shape)}.")
        array = source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source
        if array.dtype != np.uint8:
            if not np.isfinite(array).all():
                raise DualviewError("The image array holds NaN or infinite values.")
            array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        source = Image.fromarray(array)
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray)):
            stream, name = io.BytesIO(source), "The uploaded data"
        elif isinstance(source, (str, Path)):
            if not Path(source).is_file():
                raise DualviewError(f"No image file at {str(source)!r}; check the path.")
            stream, name = str(source), f"'{Path(source).name}'"
        else:
            raise DualviewError(f"An image must be a file, a PIL image or an array, not {type(source).__name__}.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                Image.init()  # register every plugin, so that FORMATS can name them
                image = Image.open(stream, formats=FORMATS)
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise DualviewError(f"{name} has {width}x{height} pixels, more than the limit of "
                                        f"{MAX_PIXELS // 1_000_000} megapixels; downscale it first.")
                image.load()
        except DualviewError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DualviewError(f"{name} is too large to decode safely (more than {MAX_PIXELS // 1_000_000} "
                                "megapixels); downscale it first.") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise DualviewError(f"{name} is not a readable image (PNG, JPEG, WebP, BMP or GIF), "
                                "or the file is truncated or corrupt.") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise DualviewError("The image is empty (zero width or height).")
    if width * height > MAX_PIXELS:
        raise DualviewError(f"The image has {width}x{height} pixels, more than the limit of "
                            f"{MAX_PIXELS // 1_000_000} megapixels; downscale it first.")
    try:
        image = _to_rgb(image)
    except (OSError, ValueError):
        raise DualviewError("The image could not be decoded; the file is truncated or corrupt.") from None
    return image
