"""Geometry of visual tokens: boxes tile the image, and each token's box holds the image content
the model actually puts at that token (read back from the processor's pixels through the
model's own packing), for fixed grids, AnyRes with unpadding / down-sampling, and Qwen's merger."""

import pytest
import torch

from tests.engine_tiny import FAMILIES, PROMPT, gradient_image, tiny_session

SIZES = [(100, 72), (60, 130), (200, 200)]


def coverage(boxes, width, height):
    """``[height, width]`` count of boxes covering each pixel centre."""
    ys = torch.arange(height, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float64)[None, :] + 0.5
    count = torch.zeros(height, width, dtype=torch.long)
    for x0, y0, x1, y1 in boxes.double():
        count += ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).long()
    return count


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_each_view_tiles_the_image(family, size):
    width, height = size
    geometry = tiny_session(family).prepare(gradient_image(width, height), PROMPT).geometry
    assert geometry.image_size == (width, height)
    assert geometry.num_visual == int(geometry.is_visual.sum())
    for view in range(len(geometry.views)):
        count = coverage(geometry.boxes[geometry.view_indices(view)], width, height)
        assert count.max() == 1  # no overlap
        if family == "llava":  # CLIP centre crop: a full-height or full-width centred window
            rows, cols = count.any(dim=1), count.any(dim=0)
            assert bool(rows.all()) or bool(cols.all())
            assert count[rows][:, cols].min() == 1
            assert abs(int(cols.nonzero()[0]) - (width - 1 - int(cols.nonzero()[-1]))) <= 1
            assert abs(int(rows.nonzero()[0]) - (height - 1 - int(rows.nonzero()[-1]))) <= 1
        else:
            assert count.min() == 1
        rows_cols = geometry.views[view][1]
        indices = geometry.view_indices(view)
        assert indices.numel() == rows_cols[0] * rows_cols[1]
        assert torch.equal(geometry.rows[indices] * rows_cols[1] + geometry.cols[indices], torch.arange(indices.numel()))


def test_onevision_downsampling_and_anyres_newlines_are_covered():
    session = tiny_session("llava_onevision")
    geometry = session.prepare(gradient_image(200, 200), PROMPT).geometry
    crops = geometry.views[1][1]
    assert crops[0] < 16 and crops[1] < 16  # 4 x 4 crops of 4 x 4 cells, down-sampled (anyres_max_9)
    assert int((~geometry.is_visual).sum()) == crops[0]  # one newline per packed row
    assert set(geometry.group_names) == {"base"} | {f"crop {i}" for i in range(1, 17)}


def decoded_positions(pixels, image_processor, width, height):
    """Mean original-image (x, y) of normalised gradient pixels ``[..., 3, h, w]`` -> ``[..., 2]``,
    over the image's own pixels (blue channel on; black padding excluded)."""
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std, dtype=torch.float64).view(3, 1, 1)
    unit = pixels.double() * std + mean
    weight = (unit[..., 2, :, :] > 0.5).double()
    total = weight.sum((-1, -2))
    return torch.stack([(unit[..., 0, :, :] * weight).sum((-1, -2)) / total * (width - 1),
                        (unit[..., 1, :, :] * weight).sum((-1, -2)) / total * (height - 1)], dim=-1)


def cells(pixels, side):
    """``[3, s, s]`` -> ``[side*side, 3, s/side, s/side]`` in raster order."""
    c, s, _ = pixels.shape
    step = s // side
    return pixels.reshape(c, side, step, side, step).permute(1, 3, 0, 2, 4).reshape(side * side, c, step, step)


def token_contents(session, prepared, width, height):
    """``[P, 2]`` the (x, y) each image slot holds per the model's own layout; NaN for newlines."""
    inputs, model, ip = prepared.inputs, session.model, session.processor.image_processor
    config = model.config
    if session.family.startswith("qwen"):
        t, p = config.vision_config.temporal_patch_size, config.vision_config.patch_size
        patches = inputs["pixel_values"].reshape(-1, 3, t, p, p)[:, :, 0]
        xy = decoded_positions(patches, ip, width, height)
        return xy.reshape(-1, config.vision_config.spatial_merge_size ** 2, 2).mean(dim=1)  # merged 2 x 2
    if session.family in ("idefics3", "smolvlm"):  # [1, tiles + global, 3, s, s] -> pixel shuffle per image
        side, scale = config.vision_config.image_size // config.vision_config.patch_size, config.scale_factor
        xy = torch.stack([decoded_positions(cells(v, side), ip, width, height) for v in inputs["pixel_values"][0]])
        shuffled = model.model.connector.pixel_shuffle(xy, scale)  # [images, tokens, scale² * 2]
        return shuffled.reshape(-1, scale * scale, 2).mean(dim=1)
    if session.family == "internvl":  # [tiles (+ thumbnail), 3, s, s] -> pixel shuffle 0.5 per image
        side = config.vision_config.image_size[0] // config.vision_config.patch_size[0]
        xy = torch.stack([decoded_positions(cells(v, side), ip, width, height) for v in inputs["pixel_values"]])
        shuffled = model.model.pixel_shuffle(xy.reshape(-1, side, side, 2), scale_factor=config.downsample_ratio)
        return shuffled.reshape(-1, round(1 / config.downsample_ratio**2), 2).mean(dim=1)
    side = config.vision_config.image_size // config.vision_config.patch_size
    if session.family == "gemma3":  # [original (+ crops), 3, s, s] -> the projector's own average pooling
        xy = torch.stack([decoded_positions(cells(v, side), ip, width, height) for v in inputs["pixel_values"]])
        pooled = model.model.multi_modal_projector.avg_pool(xy.transpose(1, 2).reshape(-1, 2, side, side))
        return pooled.flatten(2).transpose(1, 2).reshape(-1, 2)
    if session.family in ("llava", "generic"):  # one image, one grid (the generic model here: PaliGemma)
        return decoded_positions(cells(inputs["pixel_values"][0], side), ip, width, height)
    views = inputs["pixel_values"][0]  # [1 + crops, 3, s, s]
    features = torch.stack([decoded_positions(cells(v, side), ip, width, height) for v in views])
    marker = torch.tensor([float("nan"), float("nan")], dtype=torch.float64)
    if session.family == "llava_onevision":
        options = {"vision_aspect_ratio": config.vision_aspect_ratio}
    else:
        options = {"vision_feature_select_strategy": config.vision_feature_select_strategy}
    packed, _ = model.model.pack_image_features([features], inputs["image_sizes"], image_newline=marker, **options)
    return packed[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_boxes_hold_the_content_the_model_sees(family, size):
    width, height = size
    session = tiny_session(family)
    prepared = session.prepare(gradient_image(width, height), PROMPT)
    geometry = prepared.geometry
    contents = token_contents(session, prepared, width, height)
    assert contents.shape[0] == geometry.is_visual.numel()
    assert torch.equal(contents[:, 0].isnan(), ~geometry.is_visual)
    xy = contents[geometry.is_visual]
    boxes = geometry.boxes.double()
    slack_x = (boxes[:, 2] - boxes[:, 0]) * 0.75  # less than one cell
    slack_y = (boxes[:, 3] - boxes[:, 1]) * 0.75
    inside = ((xy[:, 0] >= boxes[:, 0] - slack_x) & (xy[:, 0] <= boxes[:, 2] + slack_x)
              & (xy[:, 1] >= boxes[:, 1] - slack_y) & (xy[:, 1] <= boxes[:, 3] + slack_y))
    assert bool(inside.all()), (xy[~inside][:5], boxes[~inside][:5])
