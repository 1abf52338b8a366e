"""The implicit weight's two scopes: the whole sequence (method.md §6) and the visual tokens only."""

import pytest
import torch

from dualview import dual_form
from dualview.errors import DualviewError
from dualview.methods import get_method
from tests.engine_tiny import analysis_of, gradient_image, tiny_session


def test_visual_scope_measures_the_visual_updates_alone():
    analysis = analysis_of(tiny_session("llava"), gradient_image(64, 48))
    kept = get_method("iwp").select(analysis, 0.3).kept
    k, v = analysis.visual_keys, analysis.visual_values
    assert analysis.weight_error(kept, scope="visual") == dual_form.weight_error(k, v, kept)
    assert analysis.effective_rank(kept, scope="visual") == dual_form.effective_rank(k, v, kept)
    every = torch.arange(analysis.num_visual)
    assert analysis.weight_error(every, scope="visual") == 0.0
    assert analysis.weight_error(every) == 0.0  # text is always kept in the sequence scope
    positions = analysis.prepared.visual_positions
    sequence_k, sequence_v, mask = analysis.implicit_weight(kept)
    assert torch.equal(sequence_k[:, positions], k) and int(mask.sum()) == mask.numel() - analysis.num_visual + kept.numel()
    with pytest.raises(DualviewError):
        analysis.weight_error(kept, scope="text")
