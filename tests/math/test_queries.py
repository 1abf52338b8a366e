"""The query-row choice (text | last | all | token:i) on hand-made sequence bookkeeping."""

import pytest
import torch

from dualview.errors import DualviewError
from dualview.queries import parse_query, query_positions

# A sequence of 12: BOS, 6 image slots at 1..6 of which 1..5 are prunable (6 is a row-end marker),
# scaffolding at 7, instruction tokens at 8..10, the generation prompt's last token at 11.
VISUAL = torch.tensor([1, 2, 3, 4, 5])
TEXT = torch.tensor([8, 9, 10])
LENGTH = 12


@pytest.mark.parametrize("choice, expected", [
    ("text", ("text", None)), ("last", ("last", None)), ("all", ("all", None)),
    ("token:0", ("token", 0)), ("token:12", ("token", 12)), ("  Token:3 ", ("token", 3)), ("LAST", ("last", None)),
])
def test_parse(choice, expected):
    assert parse_query(choice) == expected


@pytest.mark.parametrize("choice", ["", "mean", "token", "token:", "token:-1", "token:1.5", "token:a", "text,last", None, 3])
def test_parse_refuses_with_one_sentence(choice):
    with pytest.raises(DualviewError) as error:
        parse_query(choice)
    message = str(error.value)
    assert message.endswith(".") and message.count(". ") == 0 and "\n" not in message


def test_text_is_the_instruction_tokens():
    assert torch.equal(query_positions("text", VISUAL, TEXT, LENGTH), TEXT)


def test_last_is_the_last_position_of_the_sequence():
    assert torch.equal(query_positions("last", VISUAL, TEXT, LENGTH), torch.tensor([11]))


def test_all_is_every_position_that_is_not_a_prunable_visual_token():
    expected = torch.tensor([0, 6, 7, 8, 9, 10, 11])
    assert torch.equal(query_positions("all", VISUAL, TEXT, LENGTH), expected)


@pytest.mark.parametrize("i", range(3))
def test_token_i_indexes_the_instruction_tokens(i):
    assert torch.equal(query_positions(f"token:{i}", VISUAL, TEXT, LENGTH), TEXT[i: i + 1])


def test_token_out_of_the_prompt_is_a_user_error():
    with pytest.raises(DualviewError, match="numbered 0 to 2"):
        query_positions("token:3", VISUAL, TEXT, LENGTH)
    with pytest.raises(DualviewError, match="no instruction tokens"):
        query_positions("token:0", VISUAL, torch.zeros(0, dtype=torch.long), LENGTH)


def test_positions_outside_the_sequence_are_programming_errors():
    with pytest.raises(ValueError):
        query_positions("text", VISUAL, torch.tensor([8, 12]), LENGTH)
    with pytest.raises(ValueError):
        query_positions("last", VISUAL, TEXT, 0)
