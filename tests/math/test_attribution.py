"""Add-back search and evidence recall, on synthetic scores with a plain-Python greedy reference."""

import math
import random

import pytest
import torch

from dualview.attribution import add_back_search, evidence_recall, occlusion_effect

N = 14
DECIDER = 9


def _coupled_score(seed):
    """A non-additive score of a kept set: −softplus(−(Σ a_i + Σ_{i<j} B_ij)) over kept tokens, plus a
    large bonus for the deciding token. Counts its calls."""
    rng = random.Random(seed)
    a = [rng.uniform(-0.3, 0.3) for _ in range(N)]
    b = [[rng.uniform(-0.1, 0.1) for _ in range(N)] for _ in range(N)]

    def score(kept):
        kept = sorted(kept.tolist()) if isinstance(kept, torch.Tensor) else sorted(kept)
        score.calls += 1
        total = sum(a[i] for i in kept) + sum(b[i][j] for i in kept for j in kept if i < j)
        total += 4.0 if DECIDER in kept else -4.0
        return -math.log1p(math.exp(-total))

    score.calls = 0
    return score


def _reference_greedy(score, kept, dropped, prior, width, max_calls, restored):
    """The search as its docstring states it, with sets and lists."""
    current, remaining = set(kept), sorted(dropped, key=lambda i: (-prior[i], i))
    curve, order, calls = [score(current)], [], 1
    while not restored(current, curve[-1]) and remaining and calls < max_calls:
        shortlist = remaining[: min(width, max_calls - calls)]
        scored = [(score(current | {t}), -rank, t) for rank, t in enumerate(shortlist)]
        calls += len(shortlist)
        value, _, token = max(scored)
        order.append(token)
        curve.append(value)
        remaining.remove(token)
        current.add(token)
    return order, curve, calls


START = [0, 3, 5]
DROPPED = [i for i in range(N) if i not in START]


def _decider_back(kept, value):
    return DECIDER in kept.tolist()


def test_exhaustive_step_finds_the_deciding_token_first():
    score = _coupled_score(0)
    result = add_back_search(score, _decider_back, START, DROPPED, torch.zeros(N), width=N, max_calls=100)
    assert result.order.tolist() == [DECIDER]
    assert result.restored
    assert result.calls == score.calls == 1 + len(DROPPED)
    assert result.curve.tolist() == [score(START), score(START + [DECIDER])]


def test_shortlist_holding_the_decider_finds_it_with_width_calls():
    prior = torch.linspace(1.0, 0.0, N)  # ranks the dropped tokens 1, 2, 4, 6, ... by index
    prior[DECIDER] = prior[2] - 1e-3  # the decider comes third among the dropped tokens
    score = _coupled_score(1)
    result = add_back_search(score, _decider_back, START, DROPPED, prior, width=3, max_calls=100)
    assert result.order.tolist() == [DECIDER]
    assert result.calls == 1 + 3


def test_poor_prior_costs_additions_until_the_decider_enters_the_shortlist():
    prior = torch.zeros(N)
    prior[DECIDER] = -1.0  # ranked last
    score = _coupled_score(2)
    result = add_back_search(score, _decider_back, START, DROPPED, prior, width=2, max_calls=1000)
    # It enters the width-2 shortlist once a single other token remains.
    assert result.restored and result.order[-1] == DECIDER and len(result.order) == len(DROPPED) - 1
    expected = _reference_greedy(score, START, DROPPED, prior.tolist(), 2, 1000, lambda s, v: DECIDER in s)
    assert (result.order.tolist(), result.curve.tolist(), result.calls) == expected


@pytest.mark.parametrize("seed, width", [(3, 1), (4, 3), (5, N)])
def test_everything_back_ends_at_the_full_sets_score_and_follows_the_reference(seed, width):
    score = _coupled_score(seed)
    prior = torch.tensor([random.Random(seed).uniform(-1, 1) for _ in range(N)])
    never = lambda kept, value: False  # noqa: E731
    result = add_back_search(score, never, START, DROPPED, prior, width=width, max_calls=10_000)
    assert sorted(result.order.tolist()) == DROPPED and not result.restored
    assert result.curve[-1].item() == score(range(N))
    assert len(result.curve) == len(DROPPED) + 1 and result.curve[0].item() == score(START)
    expected = _reference_greedy(score, START, DROPPED, prior.tolist(), width, 10_000, never)
    assert (result.order.tolist(), result.curve.tolist(), result.calls) == expected


@pytest.mark.parametrize("width, max_calls", [(1, 1), (3, 2), (3, 7), (5, 12), (N, 20), (2, 9)])
def test_the_call_budget_is_respected(width, max_calls):
    score = _coupled_score(6)
    result = add_back_search(score, lambda kept, value: False, START, DROPPED, torch.zeros(N),
                             width=width, max_calls=max_calls)
    assert result.calls == score.calls
    assert result.calls <= max_calls
    assert result.calls == max_calls  # nothing restores, so the search spends the whole budget
    assert len(result.curve) == len(result.order) + 1


def test_already_restored_costs_one_call():
    score = _coupled_score(7)
    result = add_back_search(score, lambda kept, value: True, START, DROPPED, torch.zeros(N))
    assert result.order.numel() == 0 and result.restored and result.calls == 1


def test_a_score_threshold_as_the_target():
    score = _coupled_score(8)
    target = score(START + [DECIDER]) - 1e-9
    result = add_back_search(score, lambda kept, value: value >= target, START, DROPPED, torch.zeros(N), width=N)
    assert result.restored and result.order.tolist() == [DECIDER]


def test_bad_inputs_are_value_errors():
    score = _coupled_score(9)
    with pytest.raises(ValueError, match="share"):
        add_back_search(score, _decider_back, START, [3, 4], torch.zeros(N))
    with pytest.raises(ValueError, match="width"):
        add_back_search(score, _decider_back, START, DROPPED, torch.zeros(N), width=0)
    with pytest.raises(ValueError, match="max_calls"):
        add_back_search(score, _decider_back, START, DROPPED, torch.zeros(N), max_calls=0)
    with pytest.raises(ValueError, match="prior"):
        add_back_search(score, _decider_back, START, DROPPED, torch.zeros(N - 1))
    with pytest.raises(ValueError, match="NaN"):
        add_back_search(lambda kept: float("nan"), _decider_back, START, DROPPED, torch.zeros(N))


# --- occlusion -----------------------------------------------------------------------------------


def test_occlusion_is_the_drop_when_each_token_alone_is_removed():
    score = _coupled_score(10)
    kept = [1, 2, 5, DECIDER, 12]
    effect = occlusion_effect(score, torch.tensor(kept), [DECIDER, 2])
    assert score.calls == 3
    assert effect.dtype == torch.float64
    assert effect.tolist() == [score(kept) - score([1, 2, 5, 12]), score(kept) - score([1, 5, DECIDER, 12])]
    assert effect[0] > 1.0  # the deciding token


def test_occlusion_of_a_token_not_kept_is_a_value_error():
    with pytest.raises(ValueError, match="kept set"):
        occlusion_effect(_coupled_score(11), [1, 2], [3])


# --- evidence recall -----------------------------------------------------------------------------

EVIDENCE = [2, 3, 7, 11]


def test_recall_of_every_evidence_token_and_of_its_complement():
    assert evidence_recall(EVIDENCE, EVIDENCE) == 1.0
    assert evidence_recall([1, 2, 3, 4, 7, 11, 12], torch.tensor(EVIDENCE)) == 1.0
    complement = [i for i in range(16) if i not in EVIDENCE]
    assert evidence_recall(complement, EVIDENCE) == 0.0


def test_recall_is_the_share_held():
    assert evidence_recall([11, 0, 3], EVIDENCE) == 0.5
    assert evidence_recall([7], EVIDENCE) == 0.25


def test_no_evidence_gives_none():
    assert evidence_recall([1, 2], []) is None


def test_recall_refuses_duplicates_and_negative_indices():
    with pytest.raises(ValueError):
        evidence_recall([1, 1], EVIDENCE)
    with pytest.raises(ValueError):
        evidence_recall([1], [-2])
