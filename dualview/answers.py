"""When two answers count as the same: one rule for the app ("agrees with full", right / wrong
against an example's truth) and the sweep (a "flip")."""

from __future__ import annotations


def same_answer(first: str, second: str) -> bool:
    """Whether two answers are the same after whitespace normalisation and case folding:
    ``"Red "`` and ``"red"`` agree, ``"red"`` and ``"blue"`` do not."""
    return " ".join(str(first).split()).casefold() == " ".join(str(second).split()).casefold()
