"""Which query rows read the image: the ``text | last | all | token:i`` choice, on positions only.

The information magnitude (method.md §2) scores each visual token by the kernel between the mean
of some query rows and its key; the kept-mass and normaliser measures (method.md §8) read the
attention of the same rows. Which rows is a choice (method.md §8.1):

- ``text``: the instruction tokens' positions (``Prepared.text_positions``), the paper's ``q_T``
  and the default;
- ``last``: the last position of the prompt's sequence, the token whose output predicts the
  first answer token (FastV's released code scores by it);
- ``all``: every position that is not a prunable visual token (FastV's paper averages every row);
- ``token:i``: the i-th instruction token, i.e. ``text_positions[i]``, 0-based.

Nothing here knows about models: positions in, positions out.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dualview.errors import DualviewError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["QUERY_CHOICES", "DEFAULT_QUERY", "parse_query", "canonical_query", "query_positions"]

QUERY_CHOICES = ("text", "last", "all", "token:i")
"""The accepted forms of a query choice (``i`` a non-negative integer)."""

DEFAULT_QUERY = "text"
"""The paper's choice (method.md §2)."""

_TOKEN = re.compile(r"token:(\d+)")


def parse_query(choice: str) -> tuple[str, int | None]:
    """A query choice as ``(kind, index)``: ``("text", None)``, ``("last", None)``, ``("all", None)``
    or ``("token", i)``.

    Surrounding white space and letter case are ignored. The index is not checked against a prompt
    here (:func:`query_positions` does that).

    Raises:
        DualviewError: with one sentence, for anything that is not one of :data:`QUERY_CHOICES`.
    """
    if not isinstance(choice, str):
        raise DualviewError(f"The query choice must be text such as 'text', 'last', 'all' or 'token:0', not {choice!r}.")
    normalised = choice.strip().lower()
    if normalised in ("text", "last", "all"):
        return normalised, None
    match = _TOKEN.fullmatch(normalised)
    if match:
        return "token", int(match.group(1))
    raise DualviewError(f"Unknown query choice {choice!r}; use 'text', 'last', 'all' or 'token:i' "
                        "with i the 0-based index of a prompt token.")


def canonical_query(choice: str) -> str:
    """A query choice in its canonical form (``text``, ``last``, ``all`` or ``token:i``), e.g.
    ``" Token:03 "`` -> ``"token:3"``; a one-sentence DualviewError as :func:`parse_query`."""
    kind, index = parse_query(choice)
    return kind if index is None else f"token:{index}"


def query_positions(choice: str, visual_positions: Tensor, text_positions: Tensor, length: int) -> Tensor:
    """Sequence positions of the query rows a choice stands for.

    Args:
        choice: ``text``, ``last``, ``all`` or ``token:i`` (see :func:`parse_query`).
        visual_positions: ``[Nv]`` sequence positions of the prunable visual tokens.
        text_positions: ``[T]`` sequence positions of the instruction tokens (method.md §2).
        length: S, the length of the prompt's sequence (image, prompt and generation prompt; no
            teacher-forced answer tokens after it, or ``last`` would be an answer token).
    Returns:
        ``[R]`` LongTensor of positions in ``[0, S)``, ascending: ``text`` gives ``text_positions``
        (R = T), ``last`` gives ``[S − 1]`` (R = 1), ``all`` every position not in
        ``visual_positions`` (R = S − Nv; image tokens that are not prunable, such as row-end
        markers, count as non-visual here), ``token:i`` gives ``[text_positions[i]]`` (R = 1).
    Raises:
        DualviewError: (one sentence) for an unknown choice, or ``token:i`` with i ≥ T.
        ValueError: when the positions do not fit in a sequence of ``length`` (a programming error).
    """
    import torch

    kind, index = parse_query(choice)
    if length < 1:
        raise ValueError(f"a sequence needs at least one position, got length {length}")
    visual = torch.as_tensor(visual_positions, dtype=torch.long).reshape(-1)
    text = torch.as_tensor(text_positions, dtype=torch.long).reshape(-1)
    for name, positions in (("visual", visual), ("text", text)):
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= length):
            raise ValueError(f"{name} positions must lie in [0, {length}), got {positions.tolist()}")
    if kind == "text":
        return text.sort().values
    if kind == "last":
        return torch.tensor([length - 1], dtype=torch.long)
    if kind == "all":
        is_other = torch.ones(length, dtype=torch.bool)
        is_other[visual] = False
        return torch.nonzero(is_other).reshape(-1)
    if text.numel() == 0:
        raise DualviewError(f"Prompt token {index} does not exist: this prompt has no instruction tokens; "
                            "use 'last' or 'all' instead.")
    if index >= text.numel():
        raise DualviewError(f"Prompt token {index} does not exist: the prompt has {text.numel()} tokens, "
                            f"numbered 0 to {text.numel() - 1}.")
    return text[index: index + 1].clone()
