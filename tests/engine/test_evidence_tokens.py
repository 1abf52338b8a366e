"""Issue 18 §5: ground-truth boxes to visual tokens (method.md §8.5), on a real geometry."""

import torch

from dualview.attribution import evidence_recall
from dualview.engine.attribution import evidence_tokens
from tests.engine_tiny import PROMPT, gradient_image, tiny_session


def test_boxes_map_to_the_tokens_whose_patches_they_overlap():
    session = tiny_session("llava_next")  # AnyRes: two views, so one region covers tokens of both
    geometry = session.prepare(gradient_image(100, 72), PROMPT).geometry
    boxes = geometry.boxes.double()
    for token in (0, geometry.num_visual // 2, geometry.num_visual - 1):
        x0, y0, x1, y1 = boxes[token].tolist()
        inside = [x0 + 0.25 * (x1 - x0), y0 + 0.25 * (y1 - y0), x0 + 0.75 * (x1 - x0), y0 + 0.75 * (y1 - y0)]
        found = evidence_tokens(geometry, [inside])
        # by hand: every token whose box strictly overlaps the region
        expected = [i for i, (a, b, c, d) in enumerate(boxes.tolist())
                    if a < inside[2] and c > inside[0] and b < inside[3] and d > inside[1]]
        assert found.tolist() == expected and token in expected
    whole = evidence_tokens(geometry, [[0, 0, 100, 72]])
    assert whole.tolist() == list(range(geometry.num_visual))
    assert evidence_tokens(geometry, []).numel() == 0
    evidence = evidence_tokens(geometry, [[10, 10, 40, 30]])
    others = [i for i in range(geometry.num_visual) if i not in set(evidence.tolist())]
    assert evidence_recall(evidence, evidence) == 1.0 and evidence_recall(others, evidence) == 0.0
