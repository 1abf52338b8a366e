"""The patch picker: the picture with the token grid a click picks from, the selected and the forced
patches marked, and a sentence on how the model's preprocessing changed the picture.

Plain PIL images and token layouts (``Geometry.to_dict()``) in, PIL images and text out; the app
maps a click at picker pixel (x, y) back to original pixels (x / scale_x, y / scale_y). The two
scales differ only for a picture whose patches would otherwise be thinner than
:data:`MIN_PATCH_PX` (:func:`display_stretch`; the maps stretch their axes by the same factor).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

PICKER_SIDE = 512
"""Longer side of the picker picture in pixels, whatever the upload's size (an 8 x 8 upload is
scaled up, nearest neighbour, so that its patches can be clicked)."""
GRID_COLOR = (255, 255, 255, 110)
SELECTED_COLOR = (255, 43, 214, 255)
KEEP_COLOR = (40, 220, 90, 255)
DROP_COLOR = (255, 48, 48, 255)
LEGEND = "grid: the patches a click picks · magenta: selected · green: forced keep · red: forced drop"
STRETCH_TOLERANCE = 0.05
"""A patch whose width / height in the original picture is off 1 by more than this is stretched."""
MIN_PATCH_PX = 16.0
"""Thinnest an elongated patch of the picker's grid may be drawn, in picker pixels (the page shows
the picker's 512-pixel side at about 280 to 300 screen pixels): a thinner axis is drawn stretched."""
ELONGATED = 2.5
"""Patches at most this many times longer than thick are never stretched, however small: every 4:3
and 16:9 photo, in every geometry of ``dualview.engine.tiny``, is drawn at its own aspect."""
COVER_TOLERANCE = 0.97
"""A view whose boxes span less than this share of the picture's width or height crops it."""


def picker_scale(size: tuple[int, int], side: int = PICKER_SIDE) -> float:
    """Picker pixels per original pixel for an image of ``size`` (width, height)."""
    return side / max(size)


def display_stretch(layout: dict, side: int = PICKER_SIDE) -> tuple[float, float]:
    """How much the picker and the maps stretch the picture along (x, y) so that the patches a click
    picks (:func:`clickable_tokens`, their median width and height) are at least
    :data:`MIN_PATCH_PX` picker pixels thick when they are more than :data:`ELONGATED` times longer
    than thick (a squashed strip): at most one factor is above 1, rounded up to a tenth, and it never
    makes those patches longer on the thin axis than on the other. ``(1.0, 1.0)`` for ordinary
    pictures, for patches small both ways (a centre crop of a strip, a native-resolution grid of
    square patches: stretching one axis cannot thicken them) and for layouts whose boxes are not
    image regions."""
    boxes = np.asarray(layout["boxes"], dtype=float).reshape(-1, 4)
    if not layout.get("spatial", True) or not boxes.size:
        return 1.0, 1.0
    boxes = boxes[clickable_tokens(layout)]
    scale = picker_scale(tuple(layout["image_size"]), side)
    width = float(np.median(boxes[:, 2] - boxes[:, 0])) * scale
    height = float(np.median(boxes[:, 3] - boxes[:, 1])) * scale
    thin, thick = min(width, height), max(width, height)
    if thin <= 0 or thin >= MIN_PATCH_PX or thick <= ELONGATED * thin:
        return 1.0, 1.0
    factor = min(MIN_PATCH_PX / thin, thick / thin)
    factor = math.ceil(factor * 10 - 1e-9) / 10
    return (factor, 1.0) if width < height else (1.0, factor)


def stretch_caption(layout: dict, sep: str = " ") -> str:
    """``"drawn stretched N x vertically so patches can be seen"`` (or horizontally; ``sep`` before
    "so") when :func:`display_stretch` stretches the picture, else empty."""
    sx, sy = display_stretch(layout)
    if sx == sy == 1.0:
        return ""
    return f"drawn stretched {max(sx, sy):g} x {'horizontally' if sx > 1 else 'vertically'}{sep}so patches can be seen"


def clickable_tokens(layout: dict) -> np.ndarray:
    """The tokens whose boxes a click can reach: a click picks the lowest-index token whose box holds
    it (the first view first), so a later view's token is reachable only outside the earlier views'
    extent (``[K]`` token indices; every token for a single view)."""
    boxes = np.asarray(layout["boxes"], dtype=float).reshape(-1, 4)
    views = np.asarray(layout["view"], dtype=int)
    reachable, covered = [], None
    for v in sorted(set(views.tolist())):
        mine = np.nonzero(views == v)[0]
        if covered is None:
            reachable.append(mine)
        else:
            cx, cy = (boxes[mine, 0] + boxes[mine, 2]) / 2, (boxes[mine, 1] + boxes[mine, 3]) / 2
            outside = (cx < covered[0]) | (cx >= covered[2]) | (cy < covered[1]) | (cy >= covered[3])
            reachable.append(mine[outside])
        extent = [boxes[mine, 0].min(), boxes[mine, 1].min(), boxes[mine, 2].max(), boxes[mine, 3].max()]
        covered = extent if covered is None else [min(covered[0], extent[0]), min(covered[1], extent[1]),
                                                  max(covered[2], extent[2]), max(covered[3], extent[3])]
    return np.concatenate(reachable) if reachable else np.zeros(0, dtype=int)


def picker_picture(image: Image.Image, layout: dict,
                   side: int = PICKER_SIDE) -> tuple[Image.Image, tuple[float, float]]:
    """The picture at :func:`picker_scale` times :func:`display_stretch` (nearest neighbour when
    scaled up, so tiny images stay sharp) with the outlines of :func:`clickable_tokens` drawn on it,
    and its scales (picker pixels per original pixel along x, y). Made once per analysis;
    :func:`mark_picker` adds the marks that change."""
    stretch = display_stretch(layout, side)
    scale = (picker_scale(image.size, side) * stretch[0], picker_scale(image.size, side) * stretch[1])
    size = (max(1, round(image.width * scale[0])), max(1, round(image.height * scale[1])))
    resample = Image.Resampling.NEAREST if min(scale) > 1 else Image.Resampling.BILINEAR
    picture = image.convert("RGB").resize(size, resample).convert("RGBA")
    if layout.get("spatial", True):
        grid = Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(grid)
        boxes = np.asarray(layout["boxes"], dtype=float).reshape(-1, 4) * np.tile(scale, 2)
        for x0, y0, x1, y1 in boxes[clickable_tokens(layout)]:
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=GRID_COLOR, width=1)
        picture = Image.alpha_composite(picture, grid)
    return picture.convert("RGB"), scale


def mark_picker(picture: Image.Image, layout: dict, scale: tuple[float, float], *, selected: int | None = None,
                keep=(), drop=()) -> Image.Image:
    """A copy of ``picture`` (from :func:`picker_picture`, with its (x, y) ``scale``) with the forced
    keeps (green), forced drops (red) and the selected token (magenta) outlined; token indices as in
    ``layout``."""
    marked = picture.copy()
    draw = ImageDraw.Draw(marked)
    boxes = np.asarray(layout["boxes"], dtype=float).reshape(-1, 4) * np.tile(scale, 2)
    for tokens, color, width in ((keep, KEEP_COLOR, 3), (drop, DROP_COLOR, 3),
                                 ([] if selected is None else [selected], SELECTED_COLOR, 3)):
        for t in tokens:
            x0, y0, x1, y1 = boxes[int(t)]
            draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=color, width=width)
    return marked


def preprocessing_note(layout: dict) -> str:
    """One sentence per way the model's preprocessing changed the picture, read off the token
    boxes (a patch is square for the model): stretched (a view's patches are not square in the
    original picture: resized to a square or to a fixed grid) and cropped (a view spans less than
    the picture); and which tokens a click can pick when views overlap. Empty when none applies;
    the layout's own note when its boxes are not image regions."""
    if not layout.get("spatial", True):
        return layout.get("note", "")
    boxes = np.asarray(layout["boxes"], dtype=float).reshape(-1, 4)
    views = np.asarray(layout["view"], dtype=int)
    width, height = layout["image_size"]
    sentences = []
    for v, described in enumerate(layout["views"]):
        mine = boxes[views == v]
        if not mine.size:
            continue
        name = f"the {described['name']} view" if len(layout["views"]) > 1 else "the model's view"
        w, h = float(np.median(mine[:, 2] - mine[:, 0])), float(np.median(mine[:, 3] - mine[:, 1]))
        if abs(w / max(h, 1e-9) - 1) > STRETCH_TOLERANCE:
            sentences.append(f"{name[0].upper() + name[1:]} changes the aspect ratio: each of its square patches covers a "
                             f"{w:.3g} x {h:.3g} px piece of this {width} x {height} picture (the processor resizes "
                             "it to its own grid).")
        span_x = (mine[:, 2].max() - mine[:, 0].min()) / width
        span_y = (mine[:, 3].max() - mine[:, 1].min()) / height
        if min(span_x, span_y) < COVER_TOLERANCE:
            sentences.append(f"{name[0].upper() + name[1:]} crops the picture: it sees {100 * span_x:.0f} % of its width "
                             f"and {100 * span_y:.0f} % of its height; clicks outside it pick nothing.")
    reachable = clickable_tokens(layout).size
    if reachable < boxes.shape[0]:
        sentences.append(f"A click picks among the {reachable} tokens of the grid drawn on the picker (the first view "
                         f"on top); type a token number for the other {boxes.shape[0] - reachable}.")
    if caption := stretch_caption(layout):
        sentences.append(f"The picker and the maps are {caption} (their coordinates stay this picture's pixels).")
    return " ".join(sentences)
