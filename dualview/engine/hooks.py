"""Forward pre-hooks on decoder layers: capture a layer's input, or drop tokens from a layer on.

Both work with an unchanged ``model(...)`` / ``model.generate()`` at batch size 1 (see
stack-notes.md): the decoder layers of every supported family receive ``hidden_states``
(first positional argument), ``position_embeddings`` (cos, sin ``[B, S, d]``), ``position_ids``
``[B, S]`` or None, and a 4-D ``attention_mask`` or None.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@dataclass
class LayerInput:
    """What one decoder layer received: ``hidden [S, D]`` and its RoPE ``cos``/``sin`` ``[S, d]``."""

    hidden: Tensor
    cos: Tensor
    sin: Tensor


_ACTIVE: ContextVar[list | None] = ContextVar("dualview_active_keep", default=None)


def active_keep() -> Tensor | None:
    """Inside :func:`prune_from`, once its first layer has run: the ``[S']`` kept positions of the
    prompt (CPU); else None. For model code outside the decoder layers that must follow the pruning
    (Qwen3-VL's DeepStack additions)."""
    chosen = _ACTIVE.get()
    return chosen[0] if chosen else None


class StopForward(Exception):
    """Raised by a capture hook once every wanted layer input is recorded."""


@contextmanager
def capture_layer_inputs(layers, wanted: set[int], store: dict[int, LayerInput]):
    """Record the inputs of decoder layers ``wanted`` into ``store``; stop the forward pass (raise
    :class:`StopForward`) at the last of them, so later layers never run."""
    last = max(wanted)

    def make_hook(index: int):
        def hook(module, args, kwargs):
            cos, sin = kwargs["position_embeddings"]
            store[index] = LayerInput(_hidden(args, kwargs)[0].detach(), cos[0].detach(), sin[0].detach())
            if index == last:
                raise StopForward
        return hook

    handles = [layers[i].register_forward_pre_hook(make_hook(i), with_kwargs=True) for i in sorted(wanted)]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


SUPPORTED_ATTENTION = ("sdpa", "eager")
"""Attention implementations whose masks :func:`prune_from` slices correctly (a 4-D tensor or None).
Others (flex attention's block masks, flash attention's packed-sequence detection from position
ids) are not sliced, so a model using one is switched to sdpa by :func:`use_supported_attention`."""


def use_supported_attention(model) -> str | None:
    """Switch ``model`` to sdpa (eager if the model does not offer sdpa) when its language model's
    attention implementation is not in :data:`SUPPORTED_ATTENTION`, telling the user with a
    warning; returns that sentence (None when nothing changed). Call it before any forward pass,
    so that full and pruned runs agree."""
    current = getattr(model.config.get_text_config(), "_attn_implementation", None) or "sdpa"
    if current in SUPPORTED_ATTENTION:
        return None
    try:
        model.set_attn_implementation(target := "sdpa")
    except ValueError:
        model.set_attn_implementation(target := "eager")
    message = (f"dualview switched this model's attention from {current} to {target}, because its pruning "
               f"hooks support only {' and '.join(SUPPORTED_ATTENTION)} attention.")
    warnings.warn(message, stacklevel=3)
    return message


def _sliding_decode_mask(keep: Tensor, prefill_length: int, step: int, window: int, dtype) -> Tensor:
    """``[1, 1, 1, n]`` additive mask for decoding step ``step`` (0 = first new token) of a pruned
    sliding-window layer.

    Its cache holds the layer's own sequence (kept prompt positions ``keep``, then the generated
    positions) cut to its last ``window - 1`` entries, plus the new token: the last ``n = min(window,
    length)`` entries. Of those, the token at position ``prefill_length + step`` may see only the
    ones less than ``window`` positions back (the sliding window in original positions, as in the
    model's own mask)."""
    position = prefill_length + step
    sequence = torch.cat([keep, torch.arange(prefill_length, position + 1, device=keep.device)])
    seen = sequence[-min(window, sequence.numel()):]
    mask = torch.zeros(1, 1, 1, seen.numel(), dtype=dtype, device=keep.device)
    return mask.masked_fill(seen <= position - window, torch.finfo(dtype).min)


def _slice_mask(mask: Tensor, keep: Tensor, prefill_length: int) -> Tensor:
    """Slice a 4-D mask ``[B, 1, Q, K]``: query rows of a prefill call, and the key columns of the
    prompt (columns past the prompt are generated tokens and stay)."""
    if mask.shape[-2] == prefill_length:
        mask = mask.index_select(-2, keep)
    columns = torch.cat([keep, torch.arange(prefill_length, mask.shape[-1], device=keep.device)])
    return mask.index_select(-1, columns)


@contextmanager
def prune_from(layers, start: int, keep: Tensor | Callable[[LayerInput], Tensor], prefill_length: int):
    """From decoder layer ``start`` on, keep only sequence positions ``keep`` of the prompt.

    Layer ``start`` slices its incoming hidden states; every layer from ``start`` on slices its
    position embeddings, position ids and 4-D mask the same way, so kept tokens keep their
    original positions. Decoding calls (one new token) pass through; those layers' caches hold
    only the kept prompt tokens. A sliding-window layer (``self_attn.sliding_window``, Gemma 3)
    gets, at each decoding step, the mask of its window in original positions over what its
    cache holds (:func:`_sliding_decode_mask`).

    Args:
        layers: the decoder layers.
        start: first layer that sees the pruned sequence (0 = before the language model).
        keep: ``[S']`` ascending positions to keep, out of ``prefill_length``; or a function of
            layer ``start``'s input (:class:`LayerInput`) returning them, called once inside the
            prefill pass (selection fused into the forward pass).
    """
    handles = []
    on_device: dict[torch.device, Tensor] = {}
    chosen: list[Tensor] = [] if callable(keep) else [keep]
    key_length: dict[int, int] = {}  # per layer (id of the module): keys it holds after the current call

    def hook(module, args, kwargs):
        cos, sin = kwargs["position_embeddings"]
        if not chosen:
            chosen.append(keep(LayerInput(_hidden(args, kwargs)[0], cos[0], sin[0])).cpu())
        index = on_device.setdefault(cos.device, chosen[0].to(cos.device))
        if cos.shape[-2] != prefill_length:  # a decoding step
            key_length[id(module)] += cos.shape[-2]
            window = getattr(getattr(module, "self_attn", None), "sliding_window", None)
            if window:
                step = key_length[id(module)] - index.numel() - 1  # 0 for the first generated token
                mask = _sliding_decode_mask(index, prefill_length, step, window, _hidden(args, kwargs).dtype)
                return args, {**kwargs, "attention_mask": mask}
            mask = kwargs.get("attention_mask")
            # The decoding mask is built from the first layer's cache: full width when that layer
            # is unpruned (slice it), already this layer's width when pruning starts at layer 0.
            if isinstance(mask, Tensor) and mask.shape[-1] != key_length[id(module)]:
                kwargs = {**kwargs, "attention_mask": _slice_mask(mask, index, prefill_length)}
            return args, kwargs
        key_length[id(module)] = index.numel()
        hidden = _hidden(args, kwargs)
        if hidden.shape[1] == prefill_length:
            args, kwargs = _with_hidden(args, kwargs, hidden.index_select(1, index))
        kwargs = {**kwargs, "position_embeddings": (cos.index_select(-2, index), sin.index_select(-2, index))}
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"].index_select(-1, index)
        if isinstance(kwargs.get("attention_mask"), Tensor):
            kwargs["attention_mask"] = _slice_mask(kwargs["attention_mask"], index, prefill_length)
        return args, kwargs

    for layer in list(layers)[start:]:
        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    active = _ACTIVE.set(chosen)
    try:
        yield
    finally:
        _ACTIVE.reset(active)
        for handle in handles:
            handle.remove()
