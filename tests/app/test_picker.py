"""Issue 16 item 11: the patch picker draws the token grid, marks the selected and the forced
patches, scales tiny uploads up (clicks still pick the right token) and says when the model's
preprocessing changes the picture's aspect ratio or crops it, at real geometries too."""

import numpy as np
import pytest
from PIL import Image

from dualview.app import handlers
from dualview.app.models import ModelHolder
from dualview.figures import panels
from dualview.figures.picker import (KEEP_COLOR, MIN_PATCH_PX, PICKER_SIDE, SELECTED_COLOR, clickable_tokens,
                                     display_stretch, picker_picture, preprocessing_note)

PROMPT = "how many objects are there?"


@pytest.fixture(scope="module")
def holder():
    return ModelHolder(device="cpu")


def noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_a_tiny_upload_is_scaled_up_and_clicks_pick_the_token_under_them(holder):
    state = handlers.run(holder, noise(8, 8), PROMPT, "builtin", "iwp", 20, "", [], None)["state"]
    layout = state.layout
    grid_rows, grid_cols = max(layout["rows"]) + 1, max(layout["cols"]) + 1
    assert state.picker_image.size == (PICKER_SIDE, PICKER_SIDE)
    cell = PICKER_SIDE / grid_cols
    for r, c in [(0, 0), (3, 11), (grid_rows - 1, grid_cols - 1), (7, 0)]:
        x, y = (c + 0.5) * cell, (r + 0.5) * cell  # the middle of cell (r, c) on the picker
        token = handlers.pick(state, x, y, "inspect")["token"]
        assert (layout["rows"][token], layout["cols"][token]) == (r, c)


def test_the_picker_marks_the_grid_the_selected_and_the_forced_patches(holder):
    state = handlers.run(holder, Image.new("RGB", (64, 64), (0, 0, 0)), PROMPT, "builtin", "iwp", 20, "", [], None)["state"]
    grid = np.asarray(state.picker_image)
    cell = PICKER_SIDE / 14
    assert grid[int(cell * 5) + 3, int(cell) - 1].max() > 0 and grid[int(cell * 5) + 3, int(cell) + 4].max() == 0  # lines
    handlers.inspect(state, 30, "force keep")
    picture = np.asarray(handlers.refresh_picker(state)["picker"])
    x0, y0 = (round(v * PICKER_SIDE / 64) for v in state.layout["boxes"][30][:2])
    assert tuple(picture[y0 + 1, x0 + 1]) == SELECTED_COLOR[:3]  # selected drawn last, over the forced mark
    handlers.inspect(state, 31, "inspect")
    picture = np.asarray(state.picker_image)
    assert tuple(picture[y0 + 1, x0 + 1]) == KEEP_COLOR[:3]


def test_a_squashed_wide_upload_is_named_in_the_status(holder):
    status = handlers.run(holder, noise(1500, 100), PROMPT, "builtin", "iwp", 20, "", [], None)["status"]
    assert "changes the aspect ratio" in status and "1500 x 100 picture" in status
    square = handlers.run(holder, noise(64, 64), PROMPT, "builtin", "iwp", 20, "", [], None)["status"]
    assert "**Note:**" not in square


def test_real_geometries_say_how_the_processor_changed_the_picture(tmp_path):
    """LLaVA-1.5's processor centre-crops a wide picture; LLaVA-OneVision's base view squashes it
    into a square while its crops keep the aspect ratio (7 209 tokens at 1920 x 1080)."""
    import dualview
    from dualview.engine.tiny import build_tiny

    notes = {}
    for family in ("llava", "llava_onevision"):
        session = dualview.load(str(build_tiny(family, tmp_path / family, geometry="real")), device="cpu")
        geometry = session.prepare(noise(1920, 1080), PROMPT).geometry
        notes[family] = (preprocessing_note(geometry.to_dict()), geometry.to_dict())
    llava, _ = notes["llava"]
    assert "crops the picture" in llava and "56 % of its width" in llava
    onevision, layout = notes["llava_onevision"]
    assert len(layout["boxes"]) == 7209
    assert "The base view changes the aspect ratio" in onevision and "crops the picture" not in onevision
    assert len(clickable_tokens(layout)) == 729 and "type a token number for the other 6480" in onevision


def test_the_picker_is_redrawn_once_the_clicks_pause(holder):
    """A new picture loading under the pointer swallows clicks (issue 16 item 7): a pick leaves the
    picture alone, the timer (switched on by a click) redraws it only after a pause, once per change,
    and switches itself off so an idle page polls nothing."""
    state = handlers.run(holder, noise(64, 64), PROMPT, "builtin", "iwp", 20, "", [], None)["state"]
    assert set(handlers.refresh_picker(state)) == {"picker_timer"}  # Run showed the current marks: off
    assert "picker" not in handlers.pick(state, 100.0, 100.0, "force keep")
    assert handlers.refresh_picker(state) == {}  # clicked just now: keep ticking
    state.derived.last_click -= handlers.PICKER_PAUSE_S
    redrawn = handlers.refresh_picker(state)
    assert redrawn["picker"].size == (PICKER_SIDE, PICKER_SIDE)
    assert redrawn["picker_timer"].active is False
    assert set(handlers.refresh_picker(state)) == {"picker_timer"}  # drawn once


def _display_boxes(state) -> tuple[np.ndarray, float, float]:
    """Every token's box on the picker, from the picture's own size (an independent reading of the
    scales: picture pixels / original pixels along each axis), and those scales."""
    width, height = state.layout["image_size"]
    picture = state.picker_image
    scale_x, scale_y = picture.width / width, picture.height / height
    return np.asarray(state.layout["boxes"], dtype=float) * [scale_x, scale_y, scale_x, scale_y], scale_x, scale_y


@pytest.mark.parametrize("size, axis", [((3000, 200), "vertically"), ((200, 3000), "horizontally")])
def test_a_strip_upload_is_drawn_stretched_so_every_patch_can_be_seen_and_clicked(holder, size, axis):
    """Issue 16 item 11: a 3000 x 200 upload drew 1.3-pixel patch rows. The thin axis is stretched
    so every patch is at least MIN_PATCH_PX on the picker; a click at each token's centre picks it;
    the maps are stretched by the same factor, keep the picture's pixel coordinates and put every
    token in its own box; the status and the map titles say so."""
    out = handlers.run(holder, noise(*size), PROMPT, "builtin", "iwp", 20, "", [], None)
    state = out["state"]
    boxes, scale_x, scale_y = _display_boxes(state)
    factor = max(scale_x, scale_y) / min(scale_x, scale_y)
    assert factor > 3  # 1.3 px rows before
    assert (boxes[:, 2] - boxes[:, 0]).min() >= MIN_PATCH_PX - 0.05
    assert (boxes[:, 3] - boxes[:, 1]).min() >= MIN_PATCH_PX - 0.05
    assert max(state.picker_image.size) == PICKER_SIDE
    for token, (x0, y0, x1, y1) in enumerate(boxes):
        assert state.token_at_display((x0 + x1) / 2, (y0 + y1) / 2) == token
    for token in (0, 13, 100, 195):  # through the handler too
        x0, y0, x1, y1 = boxes[token]
        assert handlers.pick(state, (x0 + x1) / 2, (y0 + y1) / 2, "inspect")["token"] == token
    caption = f"drawn stretched {factor:.1f} x {axis} so patches can be seen"
    assert caption in out["status"]
    for name in ("magnitude", "duplication", "kept", "row"):
        figure = out[name] if name != "row" else handlers.inspect(state, 5, "inspect")["row"]
        assert figure.layout.yaxis.scaleratio == pytest.approx(scale_y / scale_x, rel=0.02)
        assert figure.layout.xaxis.range == (0, state.layout["image_size"][0])  # original pixels
        assert [a.text for a in figure.layout.annotations if a.name == "stretch"] == [caption.replace(" so ", "<br>so ")]
        (grid,) = panels(state.layout)
        original = np.asarray(state.layout["boxes"], dtype=float)
        for heat in (t for t in figure.data if t.type == "heatmap"):
            x_edges, y_edges = np.asarray(heat.x), np.asarray(heat.y)
            for token in range(len(original)):
                r, c = state.layout["rows"][token], state.layout["cols"][token]
                assert grid.index[r, c] == token
                assert np.allclose([x_edges[c], y_edges[r], x_edges[c + 1], y_edges[r + 1]], original[token], atol=1e-3)


def test_ordinary_pictures_are_drawn_as_before(holder):
    """A square and a 16:9 picture: one scale on both axes, the picker at PICKER_SIDE on its longer
    side, the maps unstretched and their titles and the status without a stretch caption."""
    for size in ((64, 64), (1920, 1080)):
        out = handlers.run(holder, noise(*size), PROMPT, "builtin", "iwp", 20, "", [], None)
        state = out["state"]
        assert display_stretch(state.layout) == (1.0, 1.0)
        assert state.picker_image.size == (PICKER_SIDE, round(PICKER_SIDE * size[1] / size[0]))
        assert out["magnitude"].layout.yaxis.scaleratio == 1
        assert "stretched" not in out["status"] and not out["magnitude"].layout.annotations


@pytest.mark.parametrize("family", ["llava_onevision", "llava"])
def test_a_wide_picture_at_a_real_geometry(tmp_path, family):
    """LLaVA-OneVision's base view squashes a 3000 x 200 picture into 27 x 27 tokens (rows 1.3 px on
    the picker): stretched so its clickable patches are MIN_PATCH_PX thick, clicks find them, and a
    16:9 photo is left alone. LLaVA-1.5 centre-crops the strip into square patches: nothing to
    stretch (stretching one axis cannot thicken them)."""
    import dualview
    from dualview.engine.tiny import build_tiny

    session = dualview.load(str(build_tiny(family, tmp_path / family, geometry="real")), device="cpu")
    image = noise(2048, 137)
    layout = session.prepare(image, PROMPT).geometry.to_dict()
    assert display_stretch(session.prepare(noise(1920, 1080), PROMPT).geometry.to_dict()) == (1.0, 1.0)
    picture, (scale_x, scale_y) = picker_picture(image, layout)
    assert picture.size == (round(2048 * scale_x), round(137 * scale_y))
    reachable = clickable_tokens(layout)
    boxes = np.asarray(layout["boxes"], dtype=float)
    if family == "llava":
        assert scale_x == scale_y and "stretched" not in preprocessing_note(layout)
        return
    assert len(reachable) == 729 and scale_y / scale_x == display_stretch(layout)[1] > 7
    heights = (boxes[reachable, 3] - boxes[reachable, 1]) * scale_y
    assert heights.min() >= MIN_PATCH_PX - 0.05
    assert "stretched" in preprocessing_note(layout)
    for token in reachable:  # the picker's click rule (the first view first), at the stretched centre
        x0, y0, x1, y1 = boxes[token]
        x, y = (x0 + x1) / 2, (y0 + y1) / 2
        inside = (boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y) & (y < boxes[:, 3])
        assert np.nonzero(inside)[0][0] == token
