"""Issue 18 §3: what brings a changed answer back, on a case built to flip (method.md §8.4).

The model is the TINY shapes-world layout with its matrices scaled up (``scaled_shapes_dir``) so
that its answers depend on the image; the case is a held-out question whose answer changes when the
token with the largest occlusion effect alone is removed."""

import pytest
import torch

import dualview
from dualview.attribution import occlusion_effect
from dualview.engine.attribution import AnswerScorer, FirstOrderEffect, restore_answer
from dualview.shapes import world
from dualview.shapes.model import TINY
from tests.engine_tiny import scaled_shapes_dir

SCALE, QUESTION = 12, 3  # the scale of the matrices, and the held-out question that flips


@pytest.fixture(scope="module")
def case():
    """(session, prepared, answer, layer, decisive token, occlusion effects [Nv])."""
    session = dualview.load(scaled_shapes_dir(SCALE), device="cpu")
    sample = world.heldout_set(QUESTION + 1, 12345, TINY.image_size)[QUESTION]
    prepared = session.prepare(sample.image, sample.question)
    layer = session.default_layer
    answer = session.answer(prepared, layer=layer, max_new_tokens=1)
    ids = session.answer_ids(answer)
    scorer = AnswerScorer(session, prepared.with_answer(ids), ids, layer)
    every = torch.arange(prepared.num_visual)
    effects = occlusion_effect(scorer, every, every)
    return session, prepared, answer, layer, int(effects.argmax()), effects


def test_the_decisive_token_comes_back_first_and_the_curve_ends_at_the_full_log_p(case):
    session, prepared, answer, layer, decisive, effects = case
    every = torch.arange(prepared.num_visual)
    full = session.answer_logprob(prepared, answer, layer=layer)
    # only the decisive token dropped: the answer changes, and adding it back is adding everything back
    kept = every[every != decisive]
    result = restore_answer(session, prepared, kept, answer, layer, max_calls=8)
    assert result.changed and result.restored and result.order == [decisive] and result.calls == 2
    assert result.curve[0] == result.pruned_logprob == session.answer_logprob(prepared, answer, keep=kept, layer=layer)
    assert result.curve[-1] == result.full_logprob == full  # the same forward pass as all tokens
    assert result.curve[-1] > result.curve[0]
    # dropped with the three tokens that matter least: an exhaustive step still returns the decisive one first
    quiet = torch.argsort(effects.abs())[:3]
    assert decisive not in quiet.tolist()
    dropped = torch.cat([quiet, torch.tensor([decisive])])
    kept = every[~torch.isin(every, dropped)]
    result = restore_answer(session, prepared, kept, answer, layer, max_calls=64, width=4)
    assert result.changed and result.order[0] == decisive and result.restored
    assert len(result.curve) == len(result.order) + 1 and result.calls <= 1 + 4 * len(result.order)
    assert isinstance(result.first_order, FirstOrderEffect) and result.first_order.effect.shape == (prepared.num_visual,)


def test_nothing_to_restore_when_the_answer_does_not_change(case):
    session, prepared, answer, layer, *_ = case
    result = restore_answer(session, prepared, torch.arange(prepared.num_visual), answer, layer)
    assert not result.changed and result.restored and result.order == [] and result.calls == 0
    assert result.curve == [result.pruned_logprob] and result.pruned_logprob == result.full_logprob
