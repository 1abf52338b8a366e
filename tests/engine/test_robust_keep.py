"""Issue 17, kind 7: the Python API accepts exactly what the CLI and the app accept.

Kept sets: whole-number indices as lists, tuples, ranges, numpy arrays or tensors of any integer
type, or a boolean mask of length Nv; everything else is refused with one sentence before any
model work, and ``Answer.kept`` reports the tokens actually kept. Budgets: whatever
``dualview.budget.resolve_budget`` accepts (counts, fractions, percentages, numpy and torch
scalars), with the same sentence as the CLI for a refused one.
"""

import json
import math

import numpy as np
import pytest
import torch

from dualview import cli
from dualview.engine.guards import normalize_keep
from dualview.errors import DualviewError
from dualview.budget import resolve_budget
from dualview.methods import get_method
from tests.engine_tiny import FAMILIES, PROMPT, gradient_image, tiny_dir, tiny_session

NV = 10
INDICES = [7, 0, 3]
MASK = [i in INDICES for i in range(NV)]

INTEGER_TYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
TORCH_INTEGERS = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]


def accepted_index_forms(values: list[int]) -> list:
    return [values, tuple(values), [np.int64(v) for v in values], *(np.array(values, dtype=t) for t in INTEGER_TYPES),
            *(torch.tensor(values, dtype=t) for t in TORCH_INTEGERS)]


def accepted_mask_forms(mask: list[bool]) -> list:
    return [mask, tuple(mask), [np.bool_(b) for b in mask], np.array(mask), torch.tensor(mask)]


REFUSED = [
    [1.7, 2.2], [1.0, 2.0], np.array([1.5]), torch.tensor([1.0, 2.0]), 3, 2.5, np.int64(3), torch.tensor(3),
    "1,2", b"\x01", {1: 2}, {1, 2}, [[1, 2]], torch.tensor([[1, 2]]), np.zeros((2, 2), dtype=int), [True, 2],
    [None], ["a"], [1, [2]], [True] * (NV - 1), np.ones(NV + 1, dtype=bool), [-1], [NV], [2, 2], np.array([3, 3]),
    None, object(), [2**70], np.array([2**63], dtype=np.uint64),
]


def test_every_accepted_form_gives_the_same_indices():
    for form in accepted_index_forms(INDICES) + [range(3, 6)]:
        expected = list(form) if isinstance(form, range) else INDICES
        kept = normalize_keep(form, NV)
        assert kept.dtype == torch.long and kept.tolist() == expected, form
    for form in accepted_mask_forms(MASK):
        assert normalize_keep(form, NV).tolist() == sorted(INDICES), form
    assert normalize_keep([], NV).tolist() == [] == normalize_keep([False] * NV, NV).tolist()


@pytest.mark.parametrize("keep", REFUSED, ids=repr)
def test_everything_else_is_refused_with_one_sentence(keep):
    with pytest.raises(DualviewError) as error:
        normalize_keep(keep, NV)
    message = str(error.value)
    assert "\n" not in message and message.endswith(".") and "Traceback" not in message


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_and_scores_accept_every_form_and_report_the_kept_tokens(family):
    session = tiny_session(family)
    image = gradient_image(70, 50)
    prepared = session.prepare(image, PROMPT)
    analysis = session.analyze(prepared)
    num_visual = analysis.num_visual
    indices = [num_visual - 1, 0, num_visual // 2]
    mask = [i in indices for i in range(num_visual)]
    reference = session.answer(prepared, keep=indices, max_new_tokens=2)
    assert reference.kept == indices
    logprob = session.answer_logprob(prepared, "red", keep=indices)
    error = analysis.weight_error(indices)
    for form in accepted_index_forms(indices)[::4] + accepted_mask_forms(mask)[::2]:
        answer = session.answer(prepared, keep=form, max_new_tokens=2)
        assert answer.token_ids == reference.token_ids and sorted(answer.kept) == sorted(indices)
        assert answer.kept_tokens == reference.kept_tokens
        assert session.answer_logprob(prepared, "red", keep=form) == logprob
        assert analysis.weight_error(form) == error
    handle = session.model.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(AssertionError("ran")))
    try:
        for keep in ([1.7, 2.2], [True] * 2, 3, [num_visual]):
            with pytest.raises(DualviewError):
                session.answer(prepared, keep=keep)
    finally:
        handle.remove()


BUDGETS = ["35.3%", " 25% ", np.int64(3), np.int32(3), torch.tensor(3), np.float32(0.25), torch.tensor(0.5),
           0.25, 3, "3", 3.0, "0.25", np.float64(1.0)]
BAD_BUDGETS = ["abc", "0", 0, -1, 1.5, math.nan, math.inf, True, "200%", "1000", 1000, np.int64(0),
               torch.tensor([1, 2]), torch.tensor(True), [5]]


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_budgets_match_the_analysis_and_the_validator(family):
    session = tiny_session(family)
    image = gradient_image(70, 50)
    prepared = session.prepare(image, PROMPT)
    analysis = session.analyze(prepared)
    iwp = get_method("iwp")
    for budget in BUDGETS:
        count = resolve_budget(budget, analysis.num_visual)
        answer = session.answer(prepared, method=iwp, budget=budget, layer=analysis.layer, max_new_tokens=1)
        assert answer.kept == iwp.select(analysis, budget).kept.tolist() == iwp.select(analysis, count).kept.tolist()
        assert len(answer.kept) == count, budget
    for budget in BAD_BUDGETS:
        with pytest.raises(DualviewError) as expected:
            resolve_budget(budget, analysis.num_visual)
        with pytest.raises(DualviewError) as error:
            session.answer(prepared, method=iwp, budget=budget, max_new_tokens=1)
        assert str(error.value) == str(expected.value), budget
        with pytest.raises(DualviewError) as error:
            iwp.select(analysis, budget)
        assert str(error.value) == str(expected.value), budget


def test_cli_and_api_agree_on_budgets(tmp_path, capsys):
    family = "qwen2_vl"
    session = tiny_session(family)
    path = tmp_path / "image.png"
    gradient_image(70, 50).save(path)
    analysis = session.analyze(session.prepare(gradient_image(70, 50), PROMPT))
    for budget in ("35.3%", "3", "0.25", "abc", "0", "1.5", "200%", "1000"):
        capsys.readouterr()
        code = cli.main(["answer", "--model", tiny_dir(family), "--image", str(path), "--prompt", PROMPT,
                         "--budget", budget, "--max-new-tokens", "1", "--json"])
        out, err = capsys.readouterr()
        try:
            kept = get_method("iwp").select(analysis, budget).kept.tolist()
        except DualviewError as error:
            assert code == 2 and out == "" and err == f"dualview: error: {error}\n", budget
            continue
        assert code == 0 and json.loads(out)["kept"] == kept
