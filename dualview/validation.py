"""The one validation function for user requests, shared by the app, its API and the CLI.

``validate_request`` turns whatever a user typed or uploaded into a :class:`Request` whose fields
are safe to hand to the engine, or raises :class:`DualviewError` with one sentence saying what is
wrong and what is allowed. Images are decoded here (any mode, EXIF orientation, first frame of an
animation), refused when they are not images, corrupt, empty or above :data:`MAX_PIXELS`, and
downscaled when their longer side exceeds :data:`MAX_SIDE`.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dualview.errors import DualviewError

__all__ = ["Request", "validate_request", "load_image", "parse_budget", "MAX_PIXELS", "MAX_SIDE",
           "MAX_PROMPT_CHARS", "FORMATS", "MAX_B0", "MAX_GROWTH", "MAX_LAMBDA"]

MAX_PIXELS = 64_000_000
"""Images with more pixels than this are refused before decoding (decompression bombs)."""
MAX_SIDE = 2048
"""Images whose longer side exceeds this are downscaled (aspect kept) before anything else."""
MAX_PROMPT_CHARS = 2000
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
"""The only decoders Pillow may use (JPEG includes MPO, the JPEG of phone cameras); never EPS
(Ghostscript) nor the dozens of rarer formats Pillow would otherwise try on any upload."""
MAX_B0 = 4096
MAX_GROWTH = 16
MAX_LAMBDA = 100.0


@dataclass(frozen=True)
class Request:
    """A validated request.

    Attributes:
        image: RGB PIL image (longer side ≤ MAX_SIDE); prompt: stripped, non-empty text.
        budget: kept visual tokens, a count ``1 ≤ budget ≤ Nv`` when Nv was known, else a count
            (int) or a fraction in (0, 1] (float) for the engine to resolve.
        method: a registered method name; layer: decoder layer or None (model default);
        b0, growth, lam: PC-MMR's first chunk, growth factor and penalty.
    """

    image: Image.Image
    prompt: str
    budget: int | float
    method: str
    layer: int | None
    b0: int
    growth: int
    lam: float


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
    into an RGB image no larger than MAX_SIDE, or raise DualviewError."""
    if source is None:
        raise DualviewError("No image was given; upload an image or pick an example.")
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
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    return image


def parse_budget(budget, num_visual: int | None = None) -> int | float:
    """A budget as a token count (int) or a fraction of the visual tokens (float in (0, 1]).

    Accepted: an int ≥ 1 (a count); a float in (0, 1] (a fraction); an integral float > 1 (a
    count, as sliders send); a string holding any of these or a percentage such as ``"35.3%"``;
    numpy and torch scalars of these.
    With ``num_visual`` the result is the count ``1 ≤ M ≤ Nv``.
    """
    original = budget
    if getattr(budget, "ndim", None) == 0 and hasattr(budget, "item"):  # a numpy or torch scalar
        budget = budget.item()
    if isinstance(budget, str):
        text = budget.strip()
        try:
            if text.endswith("%"):
                budget = float(text[:-1]) / 100.0
                if budget > 1.0:
                    raise DualviewError(f"A budget of {original!r} keeps more than all visual tokens; use at most 100%.")
            elif text.lstrip("+-").isdigit():
                budget = int(text)
            else:
                budget = float(text)
        except ValueError:
            raise DualviewError(f"Budget {original!r} is not a number; give a token count (e.g. 69), "
                                "a fraction (e.g. 0.353) or a percentage (e.g. 35.3%).") from None
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise DualviewError(f"Budget must be a token count or a fraction, not {type(original).__name__}.")
    if isinstance(budget, (np.integer, np.floating)):
        budget = budget.item()
    if isinstance(budget, float):
        if not math.isfinite(budget):
            raise DualviewError(f"Budget {original!r} is not a finite number.")
        if budget > 1.0 and budget == int(budget):
            budget = int(budget)
        elif not 0.0 < budget <= 1.0:
            raise DualviewError(f"Budget {original!r} is neither a token count ≥ 1 nor a fraction in (0, 1].")
    if isinstance(budget, int) and budget < 1:
        raise DualviewError(f"Budget {original!r} keeps no token; keep at least 1 visual token.")
    if num_visual is None:
        return budget
    count = max(1, round(budget * num_visual)) if isinstance(budget, float) else budget
    if count > num_visual:
        raise DualviewError(f"Budget {budget!r} is more than the {num_visual} visual tokens of this image; "
                            f"use at most {num_visual}.")
    return count


def _integer(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or float(value) != int(value) or not low <= int(value) <= high:
        raise DualviewError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return int(value)


def validate_request(image, prompt, budget, *, method: str = "iwp", layer=None, b0=2, growth=2, lam=5.0,
                     num_visual: int | None = None, num_layers: int | None = None) -> Request:
    """Check one user request; return a :class:`Request` or raise DualviewError (one sentence).

    Args:
        image: PIL image, path, bytes or array (see :func:`load_image`).
        prompt: the question; budget: see :func:`parse_budget`.
        method: a registered method name; layer: decoder layer (None or blank: the model's default);
        b0 (1..MAX_B0), growth (1..MAX_GROWTH), lam (0..MAX_LAMBDA): PC-MMR's parameters.
        num_visual: visual tokens of this image, when known (the budget becomes a count);
        num_layers: decoder layers of the model, when known (the layer is range-checked).
    """
    from dualview.methods import method_names

    if not isinstance(prompt, str) or not prompt.strip():
        raise DualviewError("The prompt is empty; type a question about the image.")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise DualviewError(f"The prompt has {len(prompt)} characters, more than the limit of {MAX_PROMPT_CHARS}.")
    names = method_names()
    if method not in names:
        raise DualviewError(f"Unknown method {method!r}; choose one of: {', '.join(names)}.")
    if isinstance(layer, str):
        text = layer.strip()
        try:
            layer = int(text) if text else None
        except ValueError:
            raise DualviewError(f"The pruning layer must be a whole number, got {text!r}.") from None
    if layer is not None:
        top = (num_layers - 1) if num_layers else 10_000
        layer = _integer(layer, "The pruning layer", 0, top)
    b0 = _integer(b0, "PC-MMR's first chunk b₀", 1, MAX_B0)
    growth = _integer(growth, "PC-MMR's growth g", 1, MAX_GROWTH)
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(lam)) or not 0.0 <= float(lam) <= MAX_LAMBDA:
        raise DualviewError(f"PC-MMR's penalty λ must be a number from 0 to {MAX_LAMBDA:g}, got {lam!r}.")
    return Request(image=load_image(image), prompt=prompt, budget=parse_budget(budget, num_visual),
                   method=method, layer=layer, b0=b0, growth=growth, lam=float(lam))
