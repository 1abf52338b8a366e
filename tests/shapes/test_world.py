"""The shapes-world generator obeys every rule of shared/docs/shapes-world.md."""

import dataclasses
import json
import math
import re

import numpy as np
import pytest
from PIL import ImageFont

from dualview.shapes import world

SIZE = 224
N = 350


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(123)
    return [world.sample(rng, SIZE) for _ in range(N)]


def _boxes(s):
    return [tuple(o["box"]) for o in s.objects] + ([tuple(s.letter["box"])] if s.letter else [])


def test_counts_sizes_inside_canvas(samples):
    lo, hi = math.ceil(0.06 * SIZE), math.floor(0.28 * SIZE)
    seen_counts = set()
    for s in samples:
        assert s.image.mode == "RGB" and s.image.size == (SIZE, SIZE)
        assert 1 <= len(s.objects) <= 6
        seen_counts.add(len(s.objects))
        for o in s.objects:
            x0, y0, x1, y1 = o["box"]
            assert x1 - x0 == y1 - y0, "boxes are square"
            assert lo <= x1 - x0 <= hi
            assert 0 <= x0 and 0 <= y0 and x1 <= SIZE and y1 <= SIZE
            assert o["shape"] in world.SHAPES and o["color"] in world.COLORS
    assert seen_counts == {1, 2, 3, 4, 5, 6}


def test_boxes_keep_the_gap(samples):
    gap = 0.04 * SIZE
    for s in samples:
        boxes = _boxes(s)
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                dx = max(b[0] - a[2], a[0] - b[2])
                dy = max(b[1] - a[3], a[1] - b[3])
                assert max(dx, dy) >= gap, (s.question, a, b)


def test_colours_within_jitter_and_drawn():
    rng = np.random.default_rng(7)
    for _ in range(120):
        scene = world.make_scene(rng, SIZE)
        scene.noise = 0.0
        img = np.asarray(world.render(scene)).astype(int)
        bg = np.array(scene.background)
        assert (bg >= 170).all() if scene.light else (bg <= 70).all()
        assert (img[0, 0] == bg).all() or any(o.box[0] == 0 and o.box[1] == 0 for o in scene.objects) \
            or (scene.letter and scene.letter["box"][:2] == (0, 0))
        for o in scene.objects:
            base = np.array(world.COLORS[o.color])
            assert np.abs(np.array(o.rgb) - base).max() <= world.COLOR_JITTER
            cx, cy = (int(v) for v in o.center)
            # every shape covers its box centre
            assert np.abs(img[cy, cx] - np.array(o.rgb)).max() <= 2, (o.shape, o.box)


def test_shapes_fill_their_box():
    rng = np.random.default_rng(3)
    for shape in world.SHAPES:
        scene = world.make_scene(rng, SIZE, n_objects=1, letter=False)
        o = scene.objects[0]
        o.shape = shape
        o.params = {"inner": 0.45} if shape == "star" else {"bar": 0.35} if shape == "cross" else {}
        _, lab = world.render(scene, labels=True)
        ys, xs = np.nonzero(lab == 1)
        x0, y0, x1, y1 = o.box
        side = x1 - x0
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        assert xs.max() - xs.min() + 1 >= side - 2, shape  # spans the box horizontally
        assert ys.max() - ys.min() + 1 >= 0.9 * side - 2, shape  # and vertically
        if shape == "triangle":  # apex at the top centre
            top = xs[ys == ys.min()]
            assert abs(top.mean() - (x0 + x1 - 1) / 2) <= 1.5
        if shape == "star":  # one point up
            top = xs[ys == ys.min()]
            assert abs(top.mean() - (x0 + x1 - 1) / 2) <= 1.5 and ys.min() <= y0 + 1


def test_letters(samples):
    with_letter = [s for s in samples if s.letter]
    assert len(with_letter) > 30
    for s in with_letter:
        scene = s.scene
        L = scene.letter
        assert L["char"] in world.LETTERS
        cap = ImageFont.load_default(size=L["font_size"]).getbbox("H")
        assert 0.07 * SIZE <= cap[3] - cap[1] <= 0.14 * SIZE
        img = np.asarray(world.render(scene.__class__(**{**scene.__dict__, "noise": 0.0}))).astype(int)
        x0, y0, x1, y1 = L["box"]
        inner = img[y0 + 3: y1 - 3, x0 + 3: x1 - 3]
        assert (inner.min(-1) >= 250).mean() > 0.4  # white rectangle
        assert (inner.max(-1) <= 40).sum() >= 8  # black glyph
        if scene.light:  # dark 1-2 px border
            assert img[y0, (x0 + x1) // 2].max() <= 40
        assert all(o["box"] != list(L["box"]) for o in s.objects)


def _recompute(s):
    objs = s.objects
    q = s.question
    if m := re.fullmatch(r"what color is the (\w+)\?", q):
        hit = [o for o in objs if o["shape"] == m[1]]
        assert len(hit) == 1
        return "color_of_shape", hit[0]["color"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        hit = [o for o in objs if o["color"] == m[1]]
        assert len(hit) == 1
        return "shape_of_color", hit[0]["shape"]
    if q == "how many objects are there?":
        return "count_objects", str(len(objs))
    if m := re.fullmatch(r"how many (\w+) are there\?", q):
        shape = {v: k for k, v in world.PLURALS.items()}[m[1]]
        return "count_shape", str(sum(o["shape"] == shape for o in objs))
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", q):
        return "exists", "yes" if any((o["color"], o["shape"]) == (m[1], m[2]) for o in objs) else "no"
    if m := re.fullmatch(r"where is the (\w+) (\w+)\?", q):
        hit = [o for o in objs if (o["color"], o["shape"]) == (m[1], m[2])]
        assert len(hit) == 1
        x0, y0, x1, y1 = hit[0]["box"]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        col, row = min(int(cx * 3 // SIZE), 2), min(int(cy * 3 // SIZE), 2)
        return "where", ["top left", "top", "top right", "left", "center", "right",
                         "bottom left", "bottom", "bottom right"][3 * row + col]
    if q == "what letter is written?":
        assert s.letter is not None
        return "letter", s.letter["char"]
    raise AssertionError(f"question outside the grammar: {q!r}")


def test_answers_follow_the_grammar(samples):
    for s in samples:
        qtype, ans = _recompute(s)
        assert qtype == s.qtype
        assert s.answer == ans, (s.question, s.answer, ans)
        assert s.answer == s.answer.lower() or re.fullmatch("[A-Z]", s.answer)


def test_evidence_boxes(samples):
    for s in samples:
        boxes = _boxes(s)
        assert all(tuple(b) in boxes for b in s.evidence)
        if s.qtype in ("color_of_shape", "shape_of_color", "where", "letter"):
            assert len(s.evidence) == 1
        if s.qtype in ("count_shape", "count_objects"):
            assert len(s.evidence) == int(s.answer)
        if s.qtype == "exists":
            assert bool(s.evidence) == (s.answer == "yes")


def test_balance(samples):
    types = [s.qtype for s in samples]
    for t in world.QUESTION_TYPES:
        assert abs(types.count(t) / N - 1 / 7) < 0.07, t
    yes = [s.answer == "yes" for s in samples if s.qtype == "exists"]
    assert 0.3 < np.mean(yes) < 0.7


def test_asked_only_when_allowed():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = world.make_scene(rng, SIZE)
        allowed = world.feasible_types(scene)
        for t in world.QUESTION_TYPES:
            if t in allowed:
                world.ask(scene, t, rng)
            else:
                with pytest.raises(ValueError):
                    world.ask(scene, t, rng)


def test_cells():
    assert world.cell_of(0, 0, 300) == "top left"
    assert world.cell_of(150, 150, 300) == "center"
    assert world.cell_of(299, 0, 300) == "top right"
    assert world.cell_of(99.9, 100, 300) == "left"
    assert world.cell_of(100, 200, 300) == "bottom"
    assert world.cell_of(300, 300, 300) == "bottom right"


def test_a_point_moves_by_less_than_its_cell_margin_without_changing_cell():
    rng = np.random.default_rng(0)
    for size in (224, 300):
        for x, y in rng.uniform(0, size, (300, 2)):
            m = world.cell_margin(x, y, size)
            assert m >= 0
            here = world.cell_of(x, y, size)
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                assert world.cell_of(x + 0.999 * m * dx, y + 0.999 * m * dy, size) == here
            # and some move by just over it changes the cell (inside the canvas)
            moved = [world.cell_of(x + 1.001 * m * dx, y + 1.001 * m * dy, size)
                     for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))]
            assert any(c != here for c in moved)
    assert world.cell_margin(224 / 3, 100, 224) == 0.0


def test_deterministic():
    a, b = world.sample_from_seed(99), world.sample_from_seed(99)
    assert a.question == b.question and a.answer == b.answer and a.objects == b.objects
    assert a.image.tobytes() == b.image.tobytes()
    c = world.sample_from_seed(100)
    assert c.image.tobytes() != a.image.tobytes()
    assert [s.question for s in world.heldout_set(20, 5)] == [s.question for s in world.heldout_set(20, 5)]


def test_other_sizes():
    s = world.sample_from_seed(4, size=336)
    assert s.image.size == (336, 336)
    for o in s.objects:
        assert 21 <= o["box"][2] - o["box"][0] <= 94


def test_examples_regenerate(tmp_path):
    paths = world.write_examples(tmp_path)
    assert len(paths) == 8
    types = set()
    for p in paths:
        meta = json.loads(p.with_suffix(".json").read_text())
        assert meta["image"] == p.name and meta["evidence"]
        types.add(meta["qtype"])
        shipped = world.EXAMPLES_DIR / p.name
        if shipped.exists():  # the shipped examples are exactly what the function writes
            assert shipped.read_bytes() == p.read_bytes()
    assert types == set(world.QUESTION_TYPES)


def test_render_plain_draws_base_colours_on_a_pure_background():
    rng = np.random.default_rng(5)
    scene = world.make_scene(rng, 224, n_objects=3, letter=True)
    img = np.asarray(world.render_plain(scene, 2))
    assert img.shape == (448, 448, 3)
    _, labels = world.render(scene, labels=True)
    for i, o in enumerate(scene.objects):
        covered = np.kron(labels == i + 1, np.ones((2, 2), bool))  # the object's pixels at 2x
        colours, counts = np.unique(img[covered].reshape(-1, 3), axis=0, return_counts=True)
        assert tuple(colours[counts.argmax()]) == world.COLORS[o.color]  # exact base colour, no jitter
    background = np.kron(labels == 0, np.ones((2, 2), bool))
    want = (255, 255, 255) if scene.light else (0, 0, 0)
    assert (img[background] == want).all(axis=-1).mean() > 0.99  # pure, no noise (edges aside)


def _plain_reference(scene, scale):
    """render_plain as it was written before drawing styles existed: one pass at ``scale`` on pure
    white or black, base colours, no noise, no anti-aliasing."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (scene.size * scale, scene.size * scale), (255, 255, 255) if scene.light else (0, 0, 0))
    d = ImageDraw.Draw(img)
    for o in scene.objects:
        world._draw_obj(d, o, world.COLORS[o.color], scale)
    if scene.letter:
        world._draw_letter(d, scene.letter, scale)
    return img


def test_plain_style_is_the_plain_drawing():
    """The held-out style "plain" is render_plain at 4x, pixel for pixel (stage 5's plain check is
    unchanged); the default style is the generator's (test_examples_regenerate checks the bytes)."""
    rng = np.random.default_rng(21)
    for _ in range(6):
        scene = world.make_scene(rng, SIZE)
        ref = _plain_reference(scene, 4).tobytes()
        assert world.render_plain(scene, 4).tobytes() == ref
        assert world.render(scene, style=world.HELDOUT_STYLES["plain"]).tobytes() == ref
        assert world.render_plain(scene, 2).tobytes() == _plain_reference(scene, 2).tobytes()
        a, b = world.render(scene, np.random.default_rng(1)), world.render(scene, np.random.default_rng(1),
                                                                              style=world.Style())
        assert a.tobytes() == b.tobytes()


def test_jpeg_on_the_default_drawing_is_a_share_of_the_default_scenes():
    rng = np.random.default_rng(3)
    drawn = [world.training_style(rng, 0.5, world.P_JPEG, 0.6) for _ in range(4000)]
    plain = [s for s in drawn if s.name in ("default", "default-jpeg")]
    assert abs(len(plain) / len(drawn) - 0.5) < 0.04
    compressed = [s for s in plain if s.jpeg]
    assert abs(len(compressed) / len(plain) - 0.6) < 0.04
    # the generator's own drawing in every field but the quality, which stays in the training range
    assert all(s == dataclasses.replace(world.DEFAULT_STYLE, name="default-jpeg", jpeg=s.jpeg) for s in compressed)
    assert {s.jpeg for s in compressed} <= set(range(world.TRAIN_JPEG[0], world.TRAIN_JPEG[1] + 1))
    assert len({s.jpeg for s in compressed}) > 40
    assert not {s.jpeg for s in compressed} & {st.jpeg for st in world.HELDOUT_STYLES.values()}
    # at 0 (stages 6-22) a default scene costs one number, as before the option existed, so the
    # stream after it is unchanged; at 1 every default scene is compressed
    a, b = np.random.default_rng(8), np.random.default_rng(8)
    assert world.training_style(a, 1.0) == world.DEFAULT_STYLE
    b.random()
    assert a.random() == b.random()
    assert world.training_style(a, 1.0, world.P_JPEG, 1.0).name == "default-jpeg"


def test_a_narrower_jpeg_range_bounds_every_compressed_training_scene():
    rng = np.random.default_rng(5)
    drawn = [world.training_style(rng, 0.5, 0.5, 0.5, (20, 30)) for _ in range(3000)]
    for name in ("default-jpeg", "train"):
        qualities = {s.jpeg for s in drawn if s.name == name and s.jpeg}
        assert qualities == set(range(20, 31)), name  # every quality of the range, none outside it
    for bad in ((12, 40), (30, 20), (20, 96)):  # a held-out quality, an empty range, above the mix's
        with pytest.raises(ValueError, match="a range of JPEG qualities inside 20,95"):
            world.training_style(rng, 0.5, 0.5, 0.5, bad)


def test_heldout_styles_are_never_sampled_in_training():
    rng = np.random.default_rng(0)
    drawn = [world.training_style(rng) for _ in range(4000)]
    assert abs(np.mean([s == world.DEFAULT_STYLE for s in drawn]) - world.P_DEFAULT_STYLE) < 0.05
    others = [s for s in drawn if s != world.DEFAULT_STYLE]
    for field in ("scale", "antialias", "filled", "stroke", "background", "jpeg"):
        assert len({getattr(s, field) for s in others}) > 1, field  # every knob varies
    assert abs(np.mean([not s.filled for s in others]) - world.P_OUTLINE) < 0.05
    assert abs(np.mean([s.jpeg > 0 for s in others]) - world.P_JPEG) < 0.05
    for p_default in (0.0, 0.2, 1.0):
        share = np.mean([world.training_style(rng, p_default) == world.DEFAULT_STYLE for _ in range(2000)])
        assert abs(share - p_default) < 0.04
    jpeg = [world.training_style(rng, 0.0, 0.7).jpeg for _ in range(2000)]
    assert abs(np.mean([q > 0 for q in jpeg]) - 0.7) < 0.04
    assert world.TRAIN_JPEG[0] <= min(q for q in jpeg if q) and max(jpeg) <= world.TRAIN_JPEG[1]
    scales = [s.scale for s in others]
    assert world.TRAIN_SCALES[0] <= min(scales) and max(scales) <= world.TRAIN_SCALES[1]
    assert not any(s.base_colors for s in others) and {s.background for s in others} == set(world.BACKGROUNDS)
    assert {s.stroke for s in others} == {0, *world.TRAIN_STROKES}
    assert min(s.jpeg or 100 for s in others) >= world.TRAIN_JPEG[0]
    for field, (low, high) in (("texture_period", world.TRAIN_TEXTURE_PERIODS),
                               ("texture_contrast", world.TRAIN_TEXTURE_CONTRASTS)):
        assert {getattr(s, field) for s in others} == set(range(low, high + 1)), field
    held = world.HELDOUT_STYLES
    assert len(held) >= 3 and all(name == style.name for name, style in held.items())
    for style in held.values():
        assert style not in drawn
    # what puts each one outside the training mix
    assert held["plain"].scale > world.TRAIN_SCALES[1] and held["plain"].base_colors
    assert held["thick-outline"].stroke > max(world.TRAIN_STROKES) and not held["thick-outline"].filled
    assert 0 < held["jpeg-12"].jpeg < world.TRAIN_JPEG[0]
    assert held["small-checker"].scale < world.TRAIN_SCALES[0]
    assert held["small-checker"].texture_contrast > world.TRAIN_TEXTURE_CONTRASTS[1]


@pytest.mark.parametrize("name", list(world.HELDOUT_STYLES) + ["train"])
def test_styles_draw_the_scene_at_their_size(name):
    rng = np.random.default_rng(3)
    style = world.HELDOUT_STYLES.get(name) or world.Style("train", scale=1.5, antialias=False, stroke=2,
                                                          background="stripes", jpeg=60)
    for _ in range(5):
        scene = world.make_scene(rng, SIZE, letter=True)
        img, labels = world.render(scene, rng, labels=True, style=style)
        side = round(style.scale * SIZE)
        assert img.size == (side, side) and img.mode == "RGB"
        assert world.to_input(img, SIZE).size == (SIZE, SIZE)
        _, filled = world.render(scene, labels=True)
        if style.filled:
            assert (labels == filled).all()  # the label map is the scene's, whatever the drawing
        else:  # outlines: each object's drawn pixels lie on its filled shape, its interior stays empty
            for i, o in enumerate(scene.objects):
                assert ((labels == i + 1) <= (filled == i + 1)).all() and (labels == i + 1).any()
        small = np.asarray(world.to_input(img, SIZE)).astype(int)
        lx0, ly0, lx1, ly1 = scene.letter["box"]
        assert np.median(small[ly0 + 1: ly1 - 1, lx0 + 1: lx1 - 1]) > 150  # the letter's white box is there


def test_outline_style_leaves_the_inside_empty():
    rng = np.random.default_rng(8)
    scene = world.make_scene(rng, SIZE, n_objects=1, letter=False)
    while scene.objects[0].shape not in ("circle", "square") or scene.objects[0].box[2] - scene.objects[0].box[0] < 40:
        scene = world.make_scene(rng, SIZE, n_objects=1, letter=False)
    o = scene.objects[0]
    img = np.asarray(world.render(scene, rng, style=world.HELDOUT_STYLES["thick-outline"])).astype(int)
    cx, cy = (int(v) for v in o.center)
    assert np.abs(img[cy, cx] - np.array(scene.background)).max() <= 3 * scene.noise + 2  # the background
    assert np.abs(img[cy, o.box[0] + 3] - np.array(o.rgb)).max() <= 3 * scene.noise + 2  # the outline


def test_jitter_moves_objects_a_little_and_questions_follow():
    rng = np.random.default_rng(4)
    moved = 0
    for _ in range(60):
        scene = world.make_scene(rng, SIZE)
        assert world.jitter_scene(scene, rng, 0.0) is scene
        jit = world.jitter_scene(scene, rng, 0.08)
        assert [(o.shape, o.color) for o in jit.objects] == [(o.shape, o.color) for o in scene.objects]
        boxes = [o.box for o in jit.objects] + ([jit.letter["box"]] if jit.letter else [])
        for i, (a, o) in enumerate(zip(jit.objects, scene.objects)):
            side, new = o.box[2] - o.box[0], a.box[2] - a.box[0]
            assert a.box[3] - a.box[1] == new and abs(new - side) <= 0.08 * side + 1
            assert abs(a.center[0] - o.center[0]) <= 0.08 * side + 1 and abs(a.center[1] - o.center[1]) <= 0.08 * side + 1
            assert 0 <= min(a.box) and max(a.box[2:]) <= SIZE
            assert all(world._apart(a.box, b, 1) for j, b in enumerate(boxes) if j != i)
            moved += a.box != o.box
        qa = world.ask(jit, "count_objects", rng)
        assert qa.evidence == [o.box for o in jit.objects]
    assert moved > 100
