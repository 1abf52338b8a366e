"""Issue 16 item 11: the patch picker draws the token grid, marks the selected and the forced
patches, scales tiny uploads up (clicks still pick the right token) and says when the model's
preprocessing changes the picture's aspect ratio or crops it, at real geometries too."""

import numpy as np
import pytest
from PIL import Image

from dualview.app import handlers
from dualview.app.models import ModelHolder
from dualview.figures.picker import KEEP_COLOR, PICKER_SIDE, SELECTED_COLOR, clickable_tokens, preprocessing_note

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
