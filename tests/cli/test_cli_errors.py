"""CLI settings that the request validator does not cover are refused by the parser, in one line."""

import pytest

from dualview import cli


@pytest.mark.parametrize("value", ["0", "-1", "513", "10000000", "many", "2.5"])
def test_generation_length_is_bounded(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["answer", "--image", "x.png", "--prompt", "q", "--max-new-tokens", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"'{value}' is not a whole number from 1 to {cli.MAX_NEW_TOKENS}" in err


def test_generation_length_in_range_parses():
    assert cli.build_parser().parse_args(["answer", "--image", "x", "--prompt", "q",
                                          "--max-new-tokens", "512"]).max_new_tokens == 512
