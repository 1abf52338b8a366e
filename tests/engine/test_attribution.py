"""Per-token effects on log p(answer) on a tiny LLaVA: the gate at 1, finite differences, occlusion,
and the add-back search driven by the real scorer."""

import functools

import pytest
import torch

import dualview
from dualview.attribution import add_back_search, occlusion_effect
from dualview.engine.attribution import AnswerScorer, first_order_effect
from tests.engine_tiny import FAMILIES, PROMPT, gradient_image, tiny_dir, tiny_session

IMAGE = gradient_image(100, 72)


def _logprob(logits, answer_ids):
    """Teacher-forced log p written out: the row before each answer token predicts it."""
    start = logits.shape[0] - len(answer_ids)
    return sum(float(torch.log_softmax(logits[start - 1 + t].double(), dim=-1)[token])
               for t, token in enumerate(answer_ids))


def _logprob_float32(logits, answer_ids):
    """The same in float32, as the engine computes it (for exact comparisons)."""
    start = logits.shape[0] - len(answer_ids)
    rows = torch.log_softmax(logits[start - 1: -1].float(), dim=-1)
    return rows[torch.arange(len(answer_ids)), torch.tensor(answer_ids)].sum()


@functools.cache
def _case(dtype=torch.float32, family="llava"):
    session = tiny_session(family) if dtype == torch.float32 else dualview.load(tiny_dir(family), device="cpu", dtype=dtype)
    prepared = session.prepare(IMAGE, PROMPT)
    answer_ids = session.answer(prepared, max_new_tokens=3).token_ids
    return session, prepared.with_answer(answer_ids), answer_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_at_one_and_every_token_kept_are_the_unpruned_model(family):
    session, prepared, answer_ids = _case(family=family)
    with torch.no_grad():
        logits = session.model(**prepared.inputs, use_cache=False).logits[0]
    expected = float(_logprob_float32(logits, answer_ids))
    result = first_order_effect(session, prepared, answer_ids, session.default_layer)
    assert result.logprob == expected
    assert result.effect.shape == (prepared.visual_positions.numel(),)
    assert result.effect.abs().max() > 0
    scorer = AnswerScorer(session, prepared, answer_ids, session.default_layer)
    everything = torch.arange(prepared.visual_positions.numel())
    assert scorer(everything) == expected
    assert scorer.restored(everything)  # the answer is the unpruned model's greedy answer
    assert expected == pytest.approx(_logprob(logits, answer_ids), abs=1e-4)


def _gated_logprob(session, prepared, answer_ids, layer, token, value):
    """log p with visual token ``token``'s hidden state entering ``layer`` multiplied by ``value``."""
    position = int(prepared.visual_positions[token])

    def hook(module, args, kwargs):
        hidden = args[0].clone()
        hidden[:, position] *= value
        return (hidden,) + tuple(args[1:]), kwargs

    handle = session.adapter.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            return _logprob(session.model(**prepared.inputs, use_cache=False).logits[0], answer_ids)
    finally:
        handle.remove()


@pytest.mark.parametrize("layer", [0, 1])
def test_gradient_matches_a_finite_difference_of_the_gate(layer):
    session, prepared, answer_ids = _case(torch.float64)
    result = first_order_effect(session, prepared, answer_ids, layer)
    assert result.effect.dtype == torch.float32
    largest = int(result.effect.abs().argmax())
    # Central differences with step 0.04: the model is float64 but its RMSNorm computes in float32,
    # so log p carries ~1e-8 of noise that smaller steps amplify (seen: under 0.1 % off at 0.04, 0.3 % at 0.01).
    for token in (largest, 0, prepared.visual_positions.numel() - 1):
        step = 0.04
        difference = (_gated_logprob(session, prepared, answer_ids, layer, token, 1 + step)
                      - _gated_logprob(session, prepared, answer_ids, layer, token, 1 - step)) / (2 * step)
        assert float(result.effect[token]) == pytest.approx(difference, rel=2e-3, abs=2e-3 * float(result.effect.abs().max()))


def test_occlusion_through_the_scorer_is_the_drop_when_a_token_is_removed():
    session, prepared, answer_ids = _case()
    layer = session.default_layer
    scorer = AnswerScorer(session, prepared, answer_ids, layer)
    everything = torch.arange(prepared.visual_positions.numel())
    tokens = [0, 7]
    effect = occlusion_effect(scorer, everything, tokens)
    assert scorer.calls == 1 + len(tokens)
    full = _logprob(session.logits(prepared, keep=everything, layer=layer)[0], answer_ids)
    for token, value in zip(tokens, effect.tolist()):
        without = everything[everything != token]
        expected = full - _logprob(session.logits(prepared, keep=without, layer=layer)[0], answer_ids)
        assert value == pytest.approx(expected, abs=1e-4)


def test_add_back_with_the_real_scorer_respects_its_budget():
    session, prepared, answer_ids = _case()
    scorer = AnswerScorer(session, prepared, answer_ids, session.default_layer)
    count = prepared.visual_positions.numel()
    kept, dropped = torch.arange(0, count, 3), torch.tensor([i for i in range(count) if i % 3])
    prior = first_order_effect(session, prepared, answer_ids, session.default_layer).effect
    result = add_back_search(scorer, scorer.restored, kept, dropped, prior, width=2, max_calls=7)
    assert result.calls == scorer.calls <= 7
    assert result.curve[0].item() == scorer(kept)
    assert result.restored == scorer.restored(torch.cat([kept, result.order]))


def test_answer_ids_must_be_the_prepared_ones():
    session, prepared, answer_ids = _case()
    with pytest.raises(ValueError, match="answer_ids"):
        AnswerScorer(session, prepared, answer_ids + [1], session.default_layer)
    with pytest.raises(ValueError, match="never scored"):
        AnswerScorer(session, prepared, answer_ids, session.default_layer).restored([0, 1])
