"""Shapes world: the scene + question generator of ``shared/docs/shapes-world.md``.

Everything is driven by a ``numpy.random.Generator`` so that a seed reproduces a sample exactly.

Public API
----------
- :func:`make_scene` draws a random scene (a :class:`Scene`: objects, optional letter, background).
- :func:`render` draws a scene to a PIL RGB image (and, on request, a per-pixel label map).
- :func:`ask` asks one question of a given type about a scene (a :class:`QA`).
- :func:`sample` draws one balanced sample: question type uniform over :data:`QUESTION_TYPES`,
  then a scene where that type may be asked, then the question (a :class:`Sample`).
- :func:`sample_from_seed` is ``sample(np.random.default_rng(seed))``.
- :func:`write_examples` regenerates ``assets/examples/`` deterministically.

A :class:`Sample` holds ``image`` (PIL RGB, ``size`` x ``size``), ``question``, ``answer``,
``qtype``, ``objects`` (each with ``shape``, ``color``, ``rgb``, ``box`` = ``(x0, y0, x1, y1)`` in
pixels, exclusive right/bottom), ``letter`` (``None`` or a dict with ``char`` and ``box``) and
``evidence``: the boxes that hold the evidence for the answer (``[]`` when the answer rests on the
absence of anything, e.g. ``is there a red star?`` -> ``no``).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
}
COLOR_NAMES = tuple(COLORS)
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
QUESTION_TYPES = ("color_of_shape", "shape_of_color", "count_shape", "count_objects", "exists", "where", "letter")

COLOR_JITTER = 25
MIN_SIZE, MAX_SIZE = 0.06, 0.28  # bounding-box side, fraction of the canvas side
GAP = 0.04  # minimum distance between boxes, fraction of the canvas side
LETTER_MIN, LETTER_MAX = 0.07, 0.14  # letter (cap) height, fraction of the canvas side
_CAP_RATIO = 0.667  # cap height / font size of Pillow's default scalable font
SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges, like a resized hand drawing


@dataclass
class Obj:
    shape: str
    color: str
    rgb: tuple
    box: tuple  # (x0, y0, x1, y1), pixels, x1/y1 exclusive; square
    params: dict = field(default_factory=dict)  # star inner ratio, cross bar width

    @property
    def center(self):
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


@dataclass
class Scene:
    size: int
    background: tuple
    light: bool
    noise: float
    objects: list
    letter: dict | None  # {"char", "box" (white rectangle), "font_size", "text_xy", "border"}


@dataclass
class QA:
    qtype: str
    question: str
    answer: str
    evidence: list  # boxes


@dataclass
class Sample:
    image: Image.Image
    question: str
    answer: str
    qtype: str
    objects: list  # list of dicts: shape, color, rgb, box
    letter: dict | None  # {"char", "box"} or None
    evidence: list  # boxes (x0, y0, x1, y1)
    scene: Scene

    def to_json(self) -> dict:
        return {
            "question": self.question,
            "answer": self.answer,
            "qtype": self.qtype,
            "size": self.image.size[0],
            "objects": self.objects,
            "letter": self.letter,
            "evidence": [list(b) for b in self.evidence],
        }


def cell_of(x: float, y: float, size: int) -> str:
    """The 3 x 3 grid cell holding the point (x, y) of a ``size`` canvas."""
    col = min(int(3 * x / size), 2)
    row = min(int(3 * y / size), 2)
    return CELLS[3 * row + col]


def cell_margin(x: float, y: float, size: int) -> float:
    """Distance (pixels of a ``size`` canvas) from the point (x, y) to the nearest inner line of the
    3 x 3 grid of :func:`cell_of`: the point can move by less than this in any direction without
    changing its cell. Where answers near 0 hang on sub-patch precision (16-px patches, lines at
    74.7 and 149.3 px on 224)."""
    return float(min(abs(v - k * size / 3) for v in (x, y) for k in (1, 2)))


def _apart(a, b, gap) -> bool:
    """Boxes a and b are at least ``gap`` apart (horizontally or vertically)."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _place(rng, side, size, boxes, gap, tries=60):
    for _ in range(tries):
        x0 = int(rng.integers(0, size - side + 1))
        y0 = int(rng.integers(0, size - side + 1))
        box = (x0, y0, x0 + side, y0 + side)
        if all(_apart(box, b, gap) for b in boxes):
            return box
    return None


def cap_height(font_size: int) -> int:
    """Cap height in pixels (the height of "H") of Pillow's default font at ``font_size``."""
    _, t, _, b = ImageFont.load_default(size=font_size).getbbox("H")
    return b - t


def _font_size_for(cap: float, size: int) -> int:
    fs = max(int(round(cap / _CAP_RATIO)), 4)
    while cap_height(fs) > LETTER_MAX * size and fs > 4:
        fs -= 1
    while cap_height(fs) < LETTER_MIN * size:
        fs += 1
    return fs


def _jitter(rng, rgb):
    return tuple(int(np.clip(c + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1), 0, 255)) for c in rgb)


def make_scene(rng: np.random.Generator, size: int = 224, n_objects: int | None = None,
               letter: bool | None = None, p_letter: float = 0.5) -> Scene:
    """Draw a random scene. ``n_objects`` 1-6 (uniform when None); ``letter`` forces a letter on/off."""
    n = int(rng.integers(1, 7)) if n_objects is None else int(n_objects)
    if not 1 <= n <= 6:
        raise ValueError("a scene has 1 to 6 objects")
    want_letter = bool(rng.random() < p_letter) if letter is None else bool(letter)
    gap = math.ceil(GAP * size)
    lo, hi = math.ceil(MIN_SIZE * size), math.floor(MAX_SIZE * size)
    light = bool(rng.random() < 0.5)
    if light:
        base = int(rng.integers(170, 256))
        background = tuple(int(np.clip(base + rng.integers(-12, 13), 170, 255)) for _ in range(3))
    else:
        base = int(rng.integers(0, 71))
        background = tuple(int(np.clip(base + rng.integers(-12, 13), 0, 70)) for _ in range(3))
    noise = float(rng.uniform(0, 6)) if rng.random() < 0.5 else 0.0
    while True:  # restart with a fresh layout if the random placement gets stuck
        boxes, letter_info = [], None
        if want_letter:
            cap = rng.uniform(LETTER_MIN, LETTER_MAX) * size
            font_size = _font_size_for(cap, size)
            char = LETTERS[int(rng.integers(0, 26))]
            font = ImageFont.load_default(size=font_size)
            l, t, r, b = font.getbbox(char)
            pad = max(2, int(round(0.25 * (b - t))))
            w, h = (r - l) + 2 * pad, (b - t) + 2 * pad
            x0 = int(rng.integers(0, size - w + 1))
            y0 = int(rng.integers(0, size - h + 1))
            letter_info = {"char": char, "box": (x0, y0, x0 + w, y0 + h), "font_size": font_size,
                           "text_xy": (x0 + pad - l, y0 + pad - t),
                           "border": int(rng.integers(1, 3)) if light else 0}
        objs = []
        # bigger objects first: they are the hard ones to fit
        sides = sorted((int(rng.integers(lo, hi + 1)) for _ in range(n)), reverse=True)
        ok = True
        taken = [letter_info["box"]] if letter_info else []
        for side in sides:
            box = None
            while box is None and side >= lo:
                box = _place(rng, side, size, taken + [o.box for o in objs], gap)
                if box is None:
                    side = max(lo, int(side * 0.8)) if side > lo else lo - 1
            if box is None:
                ok = False
                break
            shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
            color = COLOR_NAMES[int(rng.integers(0, len(COLOR_NAMES)))]
            params = {}
            if shape == "star":
                params["inner"] = float(rng.uniform(0.38, 0.5))
            elif shape == "cross":
                params["bar"] = float(rng.uniform(0.3, 0.4))
            objs.append(Obj(shape, color, _jitter(rng, COLORS[color]), box, params))
        if ok:
            order = rng.permutation(len(objs))
            objs = [objs[i] for i in order]
            return Scene(size, background, light, noise, objs, letter_info)


def _star_points(box, inner, s):
    x0, y0, x1, y1 = (v * s for v in box)
    x1, y1 = x1 - 1, y1 - 1  # inclusive pixel coordinates, like the other shapes
    side = x1 - x0
    r = side / (2 * math.sin(math.radians(72)))  # the star's width spans the box
    cx = (x0 + x1) / 2
    height = r * (1 + math.cos(math.radians(36)))
    cy = y0 + r + (side - height) / 2  # centre the star's height in the box
    pts = []
    for k in range(10):
        ang = math.radians(-90 + 36 * k)
        rad = r if k % 2 == 0 else r * inner
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def _cross_points(x0, y0, side, bar):
    """The 12 corners of an upright plus sign (bars ``bar`` wide) in the square at (x0, y0)."""
    a, b = x0 + (side - bar) / 2, y0 + (side - bar) / 2
    c, d = a + bar - 1, b + bar - 1
    x1, y1 = x0 + side - 1, y0 + side - 1
    return [(a, y0), (c, y0), (c, b), (x1, b), (x1, d), (c, d), (c, y1), (a, y1), (a, d), (x0, d), (x0, b), (a, b)]


def _draw_obj(draw: ImageDraw.ImageDraw, o: Obj, fill, s: float, stroke: int = 0, filled: bool = True):
    """Draw ``o`` at scale ``s`` in colour ``fill``. ``stroke`` > 0 with ``filled``: a dark outline of
    that many pixels around the filled shape; without ``filled``: only an outline in ``fill``."""
    x0, y0, x1, y1 = (v * s for v in o.box)
    if not filled:
        paint = dict(fill=None, outline=fill, width=max(1, stroke))
    elif stroke:
        paint = dict(fill=fill, outline=STROKE_RGB, width=stroke)
    else:
        paint = dict(fill=fill)
    if o.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), **paint)
    elif o.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), **paint)
    elif o.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], **paint)
    elif o.shape == "star":
        draw.polygon(_star_points(o.box, o.params["inner"], s), **paint)
    elif o.shape == "cross" and (stroke or not filled):  # one outline around the whole plus sign
        draw.polygon(_cross_points(x0, y0, x1 - x0, o.params["bar"] * (x1 - x0)), **paint)
    elif o.shape == "cross":
        side = x1 - x0
        bar = o.params["bar"] * side
        a = x0 + (side - bar) / 2
        draw.rectangle((a, y0, a + bar - 1, y1 - 1), fill=fill)
        b = y0 + (side - bar) / 2
        draw.rectangle((x0, b, x1 - 1, b + bar - 1), fill=fill)
    else:
        raise ValueError(o.shape)


def _draw_letter(draw: ImageDraw.ImageDraw, letter: dict, s: float, text: bool = True, fill=None):
    x0, y0, x1, y1 = (v * s for v in letter["box"])
    if fill is not None:  # label map: the whole rectangle
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        return
    if letter["border"]:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(255, 255, 255), outline=(20, 20, 20),
                       width=max(1, round(letter["border"] * s)))
    else:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(255, 255, 255))
    font = ImageFont.load_default(size=max(1, round(letter["font_size"] * s)))
    tx, ty = letter["text_xy"]
    draw.text((tx * s, ty * s), letter["char"], font=font, fill=(0, 0, 0))


@dataclass(frozen=True)
class Style:
    """How a scene is drawn, never what it shows (objects, letter, answers and evidence boxes stay
    the scene's, in its own pixels).

    ``scale``: the image is ``round(scale * scene.size)`` pixels a side (the model's processor, or
    :func:`to_input`, resamples it to the input size). ``antialias``: drawn at 2x and box-filtered
    (False: drawn once, hard edges). ``filled``: False draws outlines only. ``stroke``: outline
    width in pixels of the scene's size (a dark outline around filled shapes; the shape's own
    colour for unfilled ones). ``background``: ``"scene"`` (its colour and pixel noise), ``"pure"``
    (white for light scenes, black for dark ones), or a texture over the scene's colour,
    ``"stripes"`` or ``"checker"`` (``texture_period`` px, +- ``texture_contrast`` per channel); only
    ``"scene"`` has noise. ``base_colors``: each object in its colour's base RGB, not its jittered
    one. ``jpeg``: JPEG quality (0: none). ``Style()`` is the generator's own drawing, bit for bit.
    """

    name: str = "default"
    scale: float = 1.0
    antialias: bool = True
    filled: bool = True
    stroke: int = 0
    background: str = "scene"
    base_colors: bool = False
    jpeg: int = 0
    texture_period: int = 12
    texture_contrast: int = 18


DEFAULT_STYLE = Style()
BACKGROUNDS = ("scene", "pure", "stripes", "checker")
STROKE_RGB = (30, 30, 30)
# drawing styles training never samples (see training_style): each lies outside the training mix on
# at least one parameter: scale 4 and base colours; a 6 px outline; JPEG quality 12; scale 0.5 and
# a checker contrast of 30
HELDOUT_STYLES = {
    "plain": Style("plain", scale=4.0, antialias=False, background="pure", base_colors=True),
    "thick-outline": Style("thick-outline", filled=False, stroke=6),
    "jpeg-12": Style("jpeg-12", jpeg=12),
    "small-checker": Style("small-checker", scale=0.5, background="checker", texture_period=16,
                           texture_contrast=30),
}
# the training mix; stages 6-9 drew it with P_DEFAULT_STYLE 0.5, scales (0.7, 2.0), JPEG (40, 95),
# strokes 1-4 and no checker background (code commit 17ec647); stage 10 widened it to these ranges;
# stages 10-11 drew a quarter of the other scenes as outlines (P_OUTLINE 0.25, code commit 5417bda)
P_DEFAULT_STYLE = 0.4  # share of training scenes drawn in DEFAULT_STYLE
P_JPEG = 1 / 3  # share of the other scenes compressed as JPEG
P_OUTLINE = 0.4  # share of the other scenes drawn as unfilled outlines
TRAIN_SCALES = (0.6, 2.0)
TRAIN_JPEG = (20, 95)
TRAIN_STROKES = (1, 2, 3, 4, 5)
TRAIN_TEXTURE_PERIODS = (6, 24)  # px, inclusive
TRAIN_TEXTURE_CONTRASTS = (8, 24)  # per channel, inclusive
TRAIN_JITTER = 0.08  # jitter_scene amount, upper end (uniform from 0) for non-default styles


def check_jpeg_quality(quality: tuple[int, int]) -> None:
    """ValueError, one sentence, unless ``quality`` (LO, HI) is a range of JPEG qualities inside
    :data:`TRAIN_JPEG`, which keeps every :data:`HELDOUT_STYLES` quality out of training."""
    lo, hi = quality
    if not TRAIN_JPEG[0] <= lo <= hi <= TRAIN_JPEG[1]:
        raise ValueError(f"{lo},{hi}: a range of JPEG qualities inside {TRAIN_JPEG[0]},{TRAIN_JPEG[1]}, "
                         "so that the held-out jpeg-12 style stays unseen")


def _train_jpeg_quality(rng: np.random.Generator, quality: tuple[int, int]) -> int:
    """A JPEG quality of the training mix, uniform over ``quality`` (inclusive)."""
    return int(rng.integers(quality[0], quality[1] + 1))


def training_style(rng: np.random.Generator, p_default: float = P_DEFAULT_STYLE,
                   p_jpeg: float = P_JPEG, p_jpeg_default: float = 0.0,
                   jpeg_quality: tuple[int, int] = TRAIN_JPEG) -> Style:
    """One drawing style of the training mix: :data:`DEFAULT_STYLE` with probability
    ``p_default`` (default :data:`P_DEFAULT_STYLE`), of which a share ``p_jpeg_default`` (default
    0, stages 6-22; an extra draw only when positive) is compressed as JPEG and named
    ``"default-jpeg"`` (not :data:`DEFAULT_STYLE`, so training jitters its objects like every
    restyled scene's); otherwise scale uniform in :data:`TRAIN_SCALES` half the time (else 1),
    anti-aliasing on or off, a share :data:`P_OUTLINE` unfilled outlines of :data:`TRAIN_STROKES`
    px, filled shapes with a dark outline half the time, any of :data:`BACKGROUNDS` (textures of
    :data:`TRAIN_TEXTURE_PERIODS` and :data:`TRAIN_TEXTURE_CONTRASTS`), JPEG with probability
    ``p_jpeg`` (default :data:`P_JPEG`), current colours. Every JPEG quality is uniform over
    ``jpeg_quality`` (inclusive; default :data:`TRAIN_JPEG`, stages 6-27; ValueError unless inside
    it, :func:`check_jpeg_quality`). Never any :data:`HELDOUT_STYLES`."""
    check_jpeg_quality(jpeg_quality)
    if rng.random() < p_default:
        if p_jpeg_default and rng.random() < p_jpeg_default:
            return replace(DEFAULT_STYLE, name="default-jpeg", jpeg=_train_jpeg_quality(rng, jpeg_quality))
        return DEFAULT_STYLE
    filled = bool(rng.random() < 1 - P_OUTLINE)  # at 0.25: exactly stages 10-11's draws (< 0.75)
    stroke = int(rng.choice(TRAIN_STROKES)) if (not filled or rng.random() < 0.5) else 0
    return Style(
        name="train",
        scale=float(rng.uniform(*TRAIN_SCALES)) if rng.random() < 0.5 else 1.0,
        antialias=bool(rng.random() < 0.5),
        filled=filled,
        stroke=stroke,
        background=str(rng.choice(BACKGROUNDS)),
        jpeg=_train_jpeg_quality(rng, jpeg_quality) if rng.random() < p_jpeg else 0,
        texture_period=int(rng.integers(TRAIN_TEXTURE_PERIODS[0], TRAIN_TEXTURE_PERIODS[1] + 1)),
        texture_contrast=int(rng.integers(TRAIN_TEXTURE_CONTRASTS[0], TRAIN_TEXTURE_CONTRASTS[1] + 1)),
    )


def _background(scene: Scene, style: Style, side: int) -> Image.Image:
    """The empty canvas, ``side`` pixels a side, of ``style`` (see :class:`Style`)."""
    if style.background == "pure":
        return Image.new("RGB", (side, side), (255, 255, 255) if scene.light else (0, 0, 0))
    if style.background == "scene":
        return Image.new("RGB", (side, side), scene.background)
    idx = np.arange(side) / (style.texture_period * side / scene.size)
    if style.background == "stripes":  # diagonal
        sign = (np.floor(idx[:, None] + idx[None, :]) % 2) * 2 - 1
    elif style.background == "checker":
        sign = ((np.floor(idx[:, None]) + np.floor(idx[None, :])) % 2) * 2 - 1
    else:
        raise ValueError(f"unknown background {style.background!r}")
    arr = np.asarray(scene.background, np.float32) + style.texture_contrast * sign[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render(scene: Scene, rng: np.random.Generator | None = None, labels: bool = False,
           style: Style = DEFAULT_STYLE):
    """Draw ``scene`` in ``style`` (default: the generator's own drawing); ``rng`` draws the pixel
    noise. With ``labels``, also return a uint8 map at the scene's size: 0 background, i + 1 object
    i (its drawn pixels: the outline only for unfilled styles), 255 the letter's rectangle."""
    side = round(style.scale * scene.size)
    ss = SUPERSAMPLE if style.antialias else 1
    s = side * ss / scene.size
    big = _background(scene, style, side * ss)
    d = ImageDraw.Draw(big)
    for o in scene.objects:
        _draw_obj(d, o, COLORS[o.color] if style.base_colors else o.rgb, s, round(style.stroke * s), style.filled)
    if scene.letter:
        _draw_letter(d, scene.letter, s)
    img = big.resize((side, side), Image.Resampling.BOX) if ss > 1 else big
    if scene.noise > 0 and style.background == "scene":
        rng = rng if rng is not None else np.random.default_rng(0)
        arr = np.asarray(img).astype(np.float32)
        arr += rng.normal(0, scene.noise, arr.shape).astype(np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if style.jpeg:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=style.jpeg)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if not labels:
        return img
    lab = Image.new("L", (scene.size, scene.size), 0)
    dl = ImageDraw.Draw(lab)
    for i, o in enumerate(scene.objects):
        _draw_obj(dl, o, i + 1, 1, 0 if style.filled else style.stroke, style.filled)
    if scene.letter:
        _draw_letter(dl, scene.letter, 1, fill=255)
    return img, np.asarray(lab)


def to_input(img: Image.Image, size: int) -> Image.Image:
    """``img`` resampled to ``size`` x ``size`` as the model's processor does (bicubic); as is at that size."""
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BICUBIC)


def jitter_scene(scene: Scene, rng: np.random.Generator, amount: float) -> Scene:
    """A copy of ``scene`` with each object's box rescaled by a factor in ``1 +- amount`` and its
    centre moved by up to ``amount`` of its side (another program placing it a little off). A
    moved box must stay inside the canvas and at least 1 px clear of the other boxes and the
    letter, else the object stays put. Questions asked of the copy are answered from its geometry."""
    if amount <= 0:
        return scene
    objs = list(scene.objects)
    for i, o in enumerate(objs):
        side = o.box[2] - o.box[0]
        new = max(2, int(round(side * rng.uniform(1 - amount, 1 + amount))))
        cx = o.center[0] + rng.uniform(-amount, amount) * side
        cy = o.center[1] + rng.uniform(-amount, amount) * side
        x0, y0 = int(round(cx - new / 2)), int(round(cy - new / 2))
        box = (x0, y0, x0 + new, y0 + new)
        others = [p.box for j, p in enumerate(objs) if j != i] + ([scene.letter["box"]] if scene.letter else [])
        if min(box) >= 0 and max(box[2:]) <= scene.size and all(_apart(box, b, 1) for b in others):
            objs[i] = replace(o, box=box)
    return replace(scene, objects=objs)


def render_plain(scene: Scene, scale: int = 4) -> Image.Image:
    """``scene`` drawn the way a person would in a paint program: ``scale`` times larger, on pure
    white (light scenes) or black (dark ones), each object in its colour's base RGB, no jitter, no
    noise, no anti-aliasing (``HELDOUT_STYLES["plain"]`` at that scale). A stand-in for hand-drawn
    uploads (the processor resizes them)."""
    return render(scene, style=replace(HELDOUT_STYLES["plain"], scale=float(scale)))


# ----------------------------------------------------------------------------------------------
# Questions


def feasible_types(scene: Scene) -> list:
    """The question types that may be asked of ``scene`` (the "asked when" column)."""
    shapes = [o.shape for o in scene.objects]
    colors = [o.color for o in scene.objects]
    pairs = [(o.color, o.shape) for o in scene.objects]
    out = []
    if any(shapes.count(s) == 1 for s in set(shapes)):
        out.append("color_of_shape")
    if any(colors.count(c) == 1 for c in set(colors)):
        out.append("shape_of_color")
    out += ["count_shape", "count_objects", "exists"]
    if any(pairs.count(p) == 1 for p in set(pairs)):
        out.append("where")
    if scene.letter:
        out.append("letter")
    return out


def _pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def ask(scene: Scene, qtype: str, rng: np.random.Generator) -> QA:
    """Ask a question of type ``qtype`` about ``scene`` (which must allow it)."""
    objs = scene.objects
    shapes = [o.shape for o in objs]
    colors = [o.color for o in objs]
    pairs = [(o.color, o.shape) for o in objs]
    if qtype == "color_of_shape":
        cands = sorted(s for s in set(shapes) if shapes.count(s) == 1)
        if not cands:
            raise ValueError("no shape is unique in this scene")
        s = _pick(rng, cands)
        o = objs[shapes.index(s)]
        return QA(qtype, f"what color is the {s}?", o.color, [o.box])
    if qtype == "shape_of_color":
        cands = sorted(c for c in set(colors) if colors.count(c) == 1)
        if not cands:
            raise ValueError("no colour is unique in this scene")
        c = _pick(rng, cands)
        o = objs[colors.index(c)]
        return QA(qtype, f"what shape is the {c} object?", o.shape, [o.box])
    if qtype == "count_shape":
        present = sorted(set(shapes))
        # a shape in the scene 3 times out of 4, any shape otherwise (often absent: answer 0)
        s = _pick(rng, present) if rng.random() < 0.75 else _pick(rng, SHAPES)
        ev = [o.box for o in objs if o.shape == s]
        return QA(qtype, f"how many {PLURALS[s]} are there?", str(len(ev)), ev)
    if qtype == "count_objects":
        return QA(qtype, "how many objects are there?", str(len(objs)), [o.box for o in objs])
    if qtype == "exists":
        if rng.random() < 0.5:  # yes
            c, s = _pick(rng, sorted(set(pairs)))
        else:  # no: half the time a near miss (its colour or its shape is in the scene)
            absent = [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in pairs]
            near = [p for p in absent if p[0] in colors or p[1] in shapes]
            c, s = _pick(rng, near if near and rng.random() < 0.5 else absent)
        ev = [o.box for o in objs if (o.color, o.shape) == (c, s)]
        return QA(qtype, f"is there a {c} {s}?", "yes" if ev else "no", ev)
    if qtype == "where":
        cands = sorted(p for p in set(pairs) if pairs.count(p) == 1)
        if not cands:
            raise ValueError("no colour-shape pair is unique in this scene")
        c, s = _pick(rng, cands)
        o = objs[pairs.index((c, s))]
        return QA(qtype, f"where is the {c} {s}?", cell_of(*o.center, scene.size), [o.box])
    if qtype == "letter":
        if not scene.letter:
            raise ValueError("this scene has no letter")
        return QA(qtype, "what letter is written?", scene.letter["char"], [scene.letter["box"]])
    raise ValueError(f"unknown question type {qtype!r}")


def _scene_for(rng, qtype, size):
    """A scene where ``qtype`` may be asked."""
    while True:
        scene = make_scene(rng, size, letter=True if qtype == "letter" else None)
        if qtype in feasible_types(scene):
            return scene


def _objects_json(scene: Scene):
    objs = [{"shape": o.shape, "color": o.color, "rgb": list(o.rgb), "box": list(o.box)} for o in scene.objects]
    letter = {"char": scene.letter["char"], "box": list(scene.letter["box"])} if scene.letter else None
    return objs, letter


def sample(rng: np.random.Generator, size: int = 224, qtype: str | None = None) -> Sample:
    """One sample: question type uniform over QUESTION_TYPES (or ``qtype``), a scene that allows it."""
    qtype = _pick(rng, QUESTION_TYPES) if qtype is None else qtype
    scene = _scene_for(rng, qtype, size)
    qa = ask(scene, qtype, rng)
    img = render(scene, rng)
    objs, letter = _objects_json(scene)
    return Sample(img, qa.question, qa.answer, qtype, objs, letter, [tuple(b) for b in qa.evidence], scene)


def sample_from_seed(seed: int, size: int = 224, qtype: str | None = None) -> Sample:
    return sample(np.random.default_rng(seed), size, qtype)


def heldout_set(n: int, seed: int, size: int = 224) -> list:
    """``n`` samples from one held-out seed (a SeedSequence stream distinct from training's)."""
    rng = np.random.default_rng([seed, 0xE7A1])
    return [sample(rng, size) for _ in range(n)]


# ----------------------------------------------------------------------------------------------
# Example scenes shipped in assets/examples/

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"
# (file name, question type, constraints): small objects and letters are the interesting cases
_EXAMPLES = [
    ("01_color_of_small_shape", "color_of_shape", dict(max_side=0.09)),
    ("02_shape_of_color", "shape_of_color", dict()),
    ("03_count_shape", "count_shape", dict(min_objects=4)),
    ("04_count_objects", "count_objects", dict(min_objects=5)),
    ("05_exists_small", "exists", dict(max_side=0.10, yes=True)),
    ("06_where_small", "where", dict(max_side=0.09)),
    ("07_letter", "letter", dict()),
    ("08_letter_busy", "letter", dict(min_objects=5)),
]


def _example(qtype: str, rng, size, max_side=None, min_objects=1, yes=None) -> Sample:
    while True:
        smp = sample(rng, size, qtype)
        objs = smp.scene.objects
        if len(objs) < min_objects:
            continue
        if yes is not None and (smp.answer == "yes") != yes:
            continue
        if max_side is not None:
            ev = [b for b in smp.evidence]
            if not ev or max(b[2] - b[0] for b in ev) > max_side * size:
                continue
        return smp


def write_examples(out_dir: str | Path = EXAMPLES_DIR, size: int = 224, seed: int = 2024) -> list:
    """Regenerate the example scenes (PNG + JSON sidecar) deterministically; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (name, qtype, kw) in enumerate(_EXAMPLES):
        smp = _example(qtype, np.random.default_rng([seed, k]), size, **kw)
        png = out_dir / f"{name}.png"
        smp.image.save(png)
        (out_dir / f"{name}.json").write_text(json.dumps({"image": png.name, **smp.to_json()}, indent=1) + "\n")
        paths.append(png)
    return paths


if __name__ == "__main__":
    for p in write_examples():
        print(p)
