"""The implicit weight's two scopes: the whole sequence (method.md §6) and the visual tokens only."""

import pytest
import torch

from dualview import dual_form
from dualview.errors import DualviewError
from dualview.methods import get_method
from tests.engine_tiny import analysis_of, gradient_image, tiny_session


@pytest.mark.parametrize("share", [0.3, 0.8])  # fewer and more kept than dropped: both ways of ImplicitWeight
def test_each_scope_measures_its_own_weight(share):
    analysis = analysis_of(tiny_session("llava"), gradient_image(64, 48))
    kept = get_method("iwp").select(analysis, share).kept
    k, v = analysis.visual_keys, analysis.visual_values
    assert analysis.weight_error(kept, scope="visual") == pytest.approx(dual_form.weight_error(k, v, kept), rel=1e-9)
    assert analysis.effective_rank(kept, scope="visual") == pytest.approx(dual_form.effective_rank(k, v, kept), rel=1e-9)
    sequence = analysis.sequence_keep(kept)
    assert int(sequence.sum()) == analysis.prepared.length - analysis.num_visual + kept.numel()
    k_all, v_all = analysis.projections.k_post, analysis.projections.v
    assert analysis.weight_error(kept) == pytest.approx(dual_form.weight_error(k_all, v_all, sequence), rel=1e-9)
    assert analysis.effective_rank(kept) == pytest.approx(dual_form.effective_rank(k_all, v_all, sequence), rel=1e-9)
    assert analysis.stable_rank(kept) == pytest.approx(dual_form.stable_rank(k_all, v_all, sequence), rel=1e-9)
    every = torch.arange(analysis.num_visual)
    assert analysis.weight_error(every, scope="visual") == 0.0
    assert analysis.weight_error(every) == 0.0  # text is always kept in the sequence scope
    with pytest.raises(DualviewError):
        analysis.weight_error(kept, scope="text")
