"""Where each visual token comes from in the original image.

A :class:`Geometry` describes the image-placeholder slots of one prompt, in sequence order.
Most slots are *visual tokens* (the ones dualview scores and prunes) and have a box in
original-image pixels. **Choice:** the structural slots that carry no image region (the
per-row newline embeddings of LLaVA-NeXT / OneVision AnyRes, a CLIP class token kept by the
``full`` feature strategy) are *not* visual tokens: they are never scored, never pruned and
always kept, like text. Visual tokens are numbered 0..Nv-1 in sequence order; every index that
dualview hands out (kept sets, scores) refers to that numbering.

Boxes of one group tile the part of the image the model sees (the whole image, or the centre
crop of a centre-cropping processor): each AnyRes crop grid, after unpadding, is spread evenly
over the whole image, which is what the unpadding intends (the padded border is removed up to
less than one cell). Tiled layouts (Idefics3 / SmolVLM tiles, InternVL tiles, Gemma 3
pan-and-scan crops) put all tiles in one joint view whose cells are numbered across tiles, plus
the overview image (global image, thumbnail, original) as its own view.

A layout dualview cannot place (the generic path, for a class without an adapter whose processor
states no grid) is a *strip*: tokens in sequence order over vertical slices of the image, with
``spatial = False`` and a one-sentence ``note`` for the app and CLI to show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Geometry:
    """Image regions of the visual tokens.

    Attributes:
        image_size: (width, height) of the original image in pixels.
        is_visual: ``[P]`` bool over the P image-placeholder slots, in sequence order; False for
            structural slots (newlines, class token).
        boxes: ``[Nv, 4]`` float32 (x0, y0, x1, y1) in original-image pixels, per visual token.
        rows, cols: ``[Nv]`` LongTensor, the token's cell in its group's grid.
        group: ``[Nv]`` LongTensor index into ``group_names``.
        group_names: e.g. ``["image"]``, ``["base", "crop 1", "crop 2", ...]``.
        view: ``[Nv]`` LongTensor index into ``views``: the raster grid the token belongs to
            (AnyRes: the base view, and the joint grid of all crops after unpadding).
        views: (name, (rows, cols)) of each grid; ``rows``/``cols`` are cells of that grid.
        spatial: False when the boxes are not image regions (a strip in token order).
        note: one sentence saying why, when ``spatial`` is False; empty otherwise.
    """

    image_size: tuple[int, int]
    is_visual: Tensor
    boxes: Tensor
    rows: Tensor
    cols: Tensor
    group: Tensor
    group_names: list[str]
    view: Tensor
    views: list[tuple[str, tuple[int, int]]]
    spatial: bool = True
    note: str = ""

    @property
    def num_visual(self) -> int:
        return int(self.boxes.shape[0])

    def view_indices(self, view: int) -> Tensor:
        """Visual-token indices of grid ``view`` (index into ``views``), in raster order of that grid
        (sequence order too, except in a joint grid of tiles, whose tokens come tile by tile)."""
        members = torch.nonzero(self.view == view).reshape(-1)
        cols = self.views[view][1][1]
        return members[torch.argsort(self.rows[members] * cols + self.cols[members])]

    def to_dict(self) -> dict:
        """Plain JSON-able description (lists of numbers)."""
        return {
            "image_size": list(self.image_size),
            "boxes": [[round(float(x), 2) for x in box] for box in self.boxes],
            "rows": self.rows.tolist(),
            "cols": self.cols.tolist(),
            "group": [self.group_names[g] for g in self.group.tolist()],
            "view": self.view.tolist(),
            "views": [{"name": name, "rows": shape[0], "cols": shape[1]} for name, shape in self.views],
            "spatial": self.spatial,
            "note": self.note,
        }


class _Builder:
    """Accumulates slots group by group, in sequence order."""

    def __init__(self, image_size: tuple[int, int]):
        self.image_size = image_size
        self.is_visual: list[bool] = []
        self.boxes: list[list[float]] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.group: list[int] = []
        self.group_names: list[str] = []
        self.view: list[int] = []
        self.views: list[tuple[str, tuple[int, int]]] = []

    def structural(self, count: int = 1) -> None:
        self.is_visual.extend([False] * count)

    def grid(self, name: str, n_rows: int, n_cols: int, region: tuple[float, float, float, float],
             newline: bool = False, labels: list[str] | None = None) -> None:
        """A raster-order ``n_rows × n_cols`` grid spread evenly over ``region`` (x0, y0, x1, y1).

        ``newline`` adds one structural slot after each row. ``labels`` (one per cell, raster order)
        splits the cells into several groups (e.g. AnyRes crops); default: one group ``name``.
        A grid may be empty (0 rows or 0 columns, e.g. AnyRes crops of a very thin image after
        unpadding): it adds no cells and no view, and its rows still get their newline slots.
        """
        x0, y0, x1, y1 = region
        cell_w, cell_h = (x1 - x0) / max(n_cols, 1), (y1 - y0) / max(n_rows, 1)
        names = labels if labels is not None else [name] * (n_rows * n_cols)
        if n_rows * n_cols:
            self.views.append((name, (n_rows, n_cols)))
        for r in range(n_rows):
            for c in range(n_cols):
                self._cell([x0 + c * cell_w, y0 + r * cell_h, x0 + (c + 1) * cell_w, y0 + (r + 1) * cell_h],
                           r, c, names[r * n_cols + c])
            if newline:
                self.structural()

    def tiles(self, name: str, tile_grid: tuple[int, int], side: tuple[int, int],
              regions: list[tuple[float, float, float, float]]) -> None:
        """Tiles in raster order, each a raster ``side`` (rows, cols) grid of cells over its region,
        all in one joint view ``name + "s"`` of ``tile_grid * side`` cells; tile t is group
        ``f"{name} {t + 1}"``."""
        self.views.append((name + "s", (tile_grid[0] * side[0], tile_grid[1] * side[1])))
        for t, (x0, y0, x1, y1) in enumerate(regions):
            tile_r, tile_c = divmod(t, tile_grid[1])
            cell_w, cell_h = (x1 - x0) / side[1], (y1 - y0) / side[0]
            for r in range(side[0]):
                for c in range(side[1]):
                    self._cell([x0 + c * cell_w, y0 + r * cell_h, x0 + (c + 1) * cell_w, y0 + (r + 1) * cell_h],
                               tile_r * side[0] + r, tile_c * side[1] + c, f"{name} {t + 1}")

    def _cell(self, box: list[float], row: int, col: int, label: str) -> None:
        if label not in self.group_names:
            self.group_names.append(label)
        self.view.append(len(self.views) - 1)
        self.is_visual.append(True)
        self.boxes.append(box)
        self.rows.append(row)
        self.cols.append(col)
        self.group.append(self.group_names.index(label))

    def build(self, note: str = "") -> Geometry:
        return Geometry(
            image_size=self.image_size,
            is_visual=torch.tensor(self.is_visual, dtype=torch.bool),
            boxes=torch.tensor(self.boxes, dtype=torch.float32).reshape(-1, 4),
            rows=torch.tensor(self.rows, dtype=torch.long),
            cols=torch.tensor(self.cols, dtype=torch.long),
            group=torch.tensor(self.group, dtype=torch.long),
            group_names=self.group_names,
            view=torch.tensor(self.view, dtype=torch.long),
            views=self.views,
            spatial=not note,
            note=note,
        )


def seen_region(image_size: tuple[int, int], image_processor) -> tuple[float, float, float, float]:
    """The part of the original image a fixed-size processor keeps, (x0, y0, x1, y1) in pixels.

    A processor that resizes the shortest edge and centre-crops (CLIP, LLaVA-1.5) keeps a centred
    square-ish window; one that pads to a square first or resizes to a fixed height × width keeps
    the whole image.
    """
    width, height = image_size
    if getattr(image_processor, "do_pad", False) or not getattr(image_processor, "do_center_crop", False):
        return (0.0, 0.0, float(width), float(height))
    size, crop = image_processor.size, image_processor.crop_size
    shortest = size["shortest_edge"] if "shortest_edge" in size else min(size["height"], size["width"])
    scale = shortest / min(width, height)
    crop_w, crop_h = crop["width"] / scale, crop["height"] / scale
    left, top = max(0.0, (width - crop_w) / 2), max(0.0, (height - crop_h) / 2)
    return (left, top, min(float(width), left + crop_w), min(float(height), top + crop_h))


def fixed_grid(image_size: tuple[int, int], side: int, region: tuple[float, float, float, float],
               leading_structural: int = 0) -> Geometry:
    """LLaVA-1.5 style: one ``side × side`` grid over ``region``; optional leading class token(s)."""
    builder = _Builder(image_size)
    builder.structural(leading_structural)
    builder.grid("image", side, side, region)
    return builder.build()


def anyres(image_size: tuple[int, int], crop_grid: tuple[int, int], side: int,
           unpadded: tuple[int, int], packed: tuple[int, int], newline: bool,
           leading_structural: int = 0) -> Geometry:
    """LLaVA-NeXT / OneVision AnyRes: a base view, then the crops' joint grid with a newline per row.

    Args:
        image_size: (width, height) of the original image.
        crop_grid: (rows, cols) of crops the processor cut from the padded best-resolution canvas.
        side: tokens per crop side (vision image size / patch size).
        unpadded: (rows, cols) of the joint crop grid after ``unpad_image``.
        packed: (rows, cols) actually packed (OneVision may down-sample ``unpadded``; else equal).
        newline: whether a newline embedding follows each packed row.
        leading_structural: class tokens at the start of each view (``full`` strategy with CLS).
    """
    width, height = image_size
    whole = (0.0, 0.0, float(width), float(height))
    builder = _Builder(image_size)
    builder.structural(leading_structural)
    builder.grid("base", side, side, whole)
    # Each packed cell's crop: map its centre back into the padded canvas of crop_grid * side cells.
    pad_rows = (crop_grid[0] * side - unpadded[0]) / 2
    pad_cols = (crop_grid[1] * side - unpadded[1]) / 2
    labels = []
    for r in range(packed[0]):
        for c in range(packed[1]):
            canvas_r = pad_rows + (r + 0.5) * unpadded[0] / packed[0]
            canvas_c = pad_cols + (c + 0.5) * unpadded[1] / packed[1]
            crop_r = min(crop_grid[0] - 1, int(canvas_r // side))
            crop_c = min(crop_grid[1] - 1, int(canvas_c // side))
            labels.append(f"crop {crop_r * crop_grid[1] + crop_c + 1}")
    builder.grid("crops", packed[0], packed[1], whole, newline=newline, labels=labels)
    return builder.build()


def merged_patch_grid(image_size: tuple[int, int], grid_hw: tuple[int, int], merge: int) -> Geometry:
    """Qwen2-VL / Qwen2.5-VL: patches on a ``grid_hw`` grid over the resized image, merged ``merge × merge``.

    The processor resizes the whole image (no crop, no pad), so the merged grid spreads evenly
    over it; tokens come in raster order of the merged grid.
    """
    width, height = image_size
    builder = _Builder(image_size)
    rows, cols = math.ceil(grid_hw[0] / merge), math.ceil(grid_hw[1] / merge)
    builder.grid("image", rows, cols, (0.0, 0.0, float(width), float(height)))
    return builder.build()


def even_tiles(image_size: tuple[int, int], tile_grid: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    """Regions of a ``tile_grid`` (rows, cols) of equal tiles over the whole image, raster order
    (processors that resize the whole image to the tile grid and cut it evenly)."""
    width, height = image_size
    rows, cols = tile_grid
    return [(c * width / cols, r * height / rows, (c + 1) * width / cols, (r + 1) * height / rows)
            for r in range(rows) for c in range(cols)]


def tiled(image_size: tuple[int, int], side: tuple[int, int], tile_grid: tuple[int, int] | None,
          regions: list[tuple[float, float, float, float]] | None, overview: str | None,
          overview_first: bool, tile_name: str = "tile") -> Geometry:
    """Tiles plus an overview of the whole image (Idefics3 / SmolVLM, InternVL, Gemma 3 pan-and-scan).

    Args:
        image_size: (width, height) of the original image.
        side: (rows, cols) of tokens per tile and per overview (after pixel shuffle or pooling).
        tile_grid: (rows, cols) of tiles, or None when the image was not tiled.
        regions: each tile's (x0, y0, x1, y1) in original-image pixels, raster order over
            ``tile_grid`` (e.g. :func:`even_tiles`).
        overview: view name of the whole-image view ("global image", "thumbnail", "original"), or
            None when there is none.
        overview_first: whether the overview's tokens come before the tiles' (Gemma 3) or after.
        tile_name: what a tile is called ("tile", "crop"): groups "tile 1", ..., view "tiles".
    """
    width, height = image_size
    builder = _Builder(image_size)
    if overview and overview_first:
        builder.grid(overview, side[0], side[1], (0.0, 0.0, float(width), float(height)))
    if tile_grid is not None:
        builder.tiles(tile_name, tile_grid, side, regions)
    if overview and not overview_first:
        builder.grid(overview, side[0], side[1], (0.0, 0.0, float(width), float(height)))
    return builder.build()


def strip(image_size: tuple[int, int], count: int, note: str) -> Geometry:
    """``count`` tokens in sequence order as one row over vertical slices of the image, not spatial."""
    width, height = image_size
    builder = _Builder(image_size)
    builder.grid("tokens (not spatial)", 1, count, (0.0, 0.0, float(width), float(height)))
    return builder.build(note=note)
