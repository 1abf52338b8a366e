"""Checks of what a caller hands to the engine, each in one place, each refusing with one sentence.

- :func:`refuse_special_text`: prompts and answer texts must be plain text; a piece that the
  model's tokenizer or processor would read as a special token (an image placeholder, a chat
  marker, any added token) is refused, naming it.
- :func:`normalize_keep`: every accepted form of a kept set (integer indices, a boolean mask)
  as one ``[M]`` LongTensor of visual-token indices.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from dualview.errors import DualviewError


def special_strings(processor) -> dict[str, int | None]:
    """Every text the processor or its tokenizer treats specially, with its token id.

    Taken from the objects themselves: the tokenizer's added tokens (special or not, which
    include every chat-template marker and image/video placeholder it knows) and each ``*_token``
    string attribute of the processor (what it expands by string replacement, e.g.
    ``image_token``). The id is None for a processor string the tokenizer does not know.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    found = {added.content: index for index, added in tokenizer.added_tokens_decoder.items()}
    for name, value in vars(processor).items():
        if name.endswith("_token") and isinstance(value, str) and value:
            found.setdefault(value, tokenizer.convert_tokens_to_ids(value)
                             if value in tokenizer.get_vocab() else None)
    return found


def refuse_special_text(processor, text: str, what: str = "prompt") -> None:
    """Raise DualviewError if ``text`` holds a piece the model would not read as plain text.

    Two tests, both from the model's own objects: a special string (:func:`special_strings`)
    occurs in ``text`` literally (what the processor's string replacements and the tokenizer's
    added-token matcher see), or tokenizing ``text`` alone yields an added token's id (what a
    normalising tokenizer may match, e.g. after lower-casing). The unknown token is not counted:
    it stands for unknown plain text.
    """
    if not isinstance(text, str):
        raise DualviewError(f"The {what} must be text, not {type(text).__name__}.")
    specials = special_strings(processor)
    tokenizer = getattr(processor, "tokenizer", processor)
    hit = next((piece for piece in sorted(specials, key=text.find) if piece in text), None)
    if hit is None:
        ids = set(tokenizer(text, add_special_tokens=False)["input_ids"]) - {tokenizer.unk_token_id}
        by_id = {index: piece for piece, index in specials.items() if index is not None}
        hit = next((by_id[index] for index in sorted(ids) if index in by_id), None)
    if hit is not None:
        raise DualviewError(f"The {what} contains {hit!r}, which this model's tokenizer reads as a special "
                            "token, not as text; remove it (dualview adds the image placeholder and the chat "
                            "markers itself).")


def normalize_keep(keep, num_visual: int) -> Tensor:
    """A kept set as an ``[M]`` LongTensor of visual-token indices (0..Nv-1), or a DualviewError.

    Accepted: a 1-D sequence, numpy array or tensor of whole-number indices (Python, numpy or
    torch integers), in any order, each at most once (the order is kept); or a 1-D boolean mask
    of length ``num_visual`` (True = kept; indices ascending). Refused with one sentence: a
    scalar (a number of tokens is a budget: use ``method=`` and ``budget=``), fractional or
    non-numeric entries, a mix of booleans and numbers, more than one dimension, a mask of
    another length, indices outside 0..Nv-1, duplicates.
    """
    allowed = (f"give visual-token indices from 0 to {num_visual - 1} (whole numbers) or a boolean mask of "
               f"length {num_visual}")
    out_of_range = DualviewError(f"Kept token indices must lie between 0 and {num_visual - 1} "
                                 f"(this image has {num_visual} visual tokens).")
    not_a_list = DualviewError(f"keep={keep!r} is not a list of tokens; {allowed}, or pass method= and budget= "
                               "to keep a number of tokens.")
    if isinstance(keep, (str, bytes, dict, set, numbers.Number)) or \
            (isinstance(keep, (np.ndarray, Tensor)) and keep.ndim == 0):
        raise not_a_list
    if isinstance(keep, Tensor):
        array = keep.detach().cpu().numpy()
    else:
        try:
            items = list(keep)
        except TypeError:
            raise not_a_list from None
        if len({isinstance(x, (bool, np.bool_)) for x in items}) > 1:
            raise DualviewError(f"keep mixes booleans and numbers; {allowed}.")
        try:
            array = np.asarray(items) if items else np.zeros(0, dtype=np.int64)
        except ValueError:
            raise DualviewError(f"keep is not a flat list of tokens; {allowed}.") from None
    if array.ndim != 1:
        raise DualviewError(f"keep has shape {tuple(array.shape)}, not one dimension; {allowed}.")
    if array.dtype == np.bool_:
        if array.shape[0] != num_visual:
            raise DualviewError(f"A boolean keep mask must have one entry per visual token ({num_visual}), "
                                f"not {array.shape[0]}.")
        return torch.from_numpy(np.flatnonzero(array)).long()
    if not np.issubdtype(array.dtype, np.integer):
        bad = next((x for x in array.tolist() if not isinstance(x, numbers.Integral)), None)
        if bad is None:  # whole numbers beyond 64 bits
            raise out_of_range
        raise DualviewError(f"keep holds {bad!r}, which is not a whole-number token index; {allowed}.")
    if array.size and (array.min() < 0 or array.max() >= num_visual):
        raise out_of_range
    kept = torch.from_numpy(array.astype(np.int64))
    if kept.unique().numel() != kept.numel():
        raise DualviewError("The kept token indices contain duplicates; give each visual token once.")
    return kept
