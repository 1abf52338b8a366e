"""The one validation function for user requests, shared by the app, its API and the CLI.

``validate_request`` turns whatever a user typed or uploaded into a :class:`Request` whose fields
are safe to hand to the engine, or raises :class:`DualviewError` with one sentence saying what is
wrong and what is allowed. The image is decoded once, by :func:`dualview.images.load_image`; the
budget is resolved by :func:`dualview.budget.resolve_budget`; the method and its parameters are
checked against the registry (:mod:`dualview.methods`), which alone declares them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from PIL import Image

from dualview.budget import as_scalar, resolve_budget
from dualview.errors import DualviewError
from dualview.images import load_image

__all__ = ["Request", "validate_request", "validate_choice", "parse_layer", "MAX_PROMPT_CHARS", "MAX_SEARCH_CALLS"]

MAX_PROMPT_CHARS = 2000
MAX_SEARCH_CALLS = 512
"""The most forward passes one "what brings the answer back" search may be given (app and CLI)."""


@dataclass(frozen=True)
class Request:
    """A validated request.

    Attributes:
        image: RGB PIL image (at most MAX_PIXELS pixels, its own resolution); prompt: stripped, non-empty text.
        budget: kept visual tokens, a count ``1 ≤ budget ≤ Nv`` when Nv was known, else a count
            (int) or a fraction in (0, 1] (float) for the engine to resolve.
        method: a registered method name; layer: decoder layer or None (model default);
        params: every parameter of the method, checked (defaults filled in from the registry).
    """

    image: Image.Image
    prompt: str
    budget: int | float
    method: str
    layer: int | None
    params: dict = field(default_factory=dict)


def parse_layer(layer, num_layers: int | None = None) -> int | None:
    """A decoder layer from a number or text (blank or None: the model's default), range-checked
    against ``num_layers`` when known; a one-sentence DualviewError otherwise."""
    if isinstance(layer, str):
        text = layer.strip()
        try:
            layer = int(text) if text else None
        except ValueError:
            raise DualviewError(f"The pruning layer must be a whole number, got {text!r}.") from None
    if layer is None:
        return None
    top = (num_layers - 1) if num_layers else None
    layer = as_scalar(layer)
    if isinstance(layer, bool) or not isinstance(layer, numbers.Real) or not math.isfinite(float(layer)) \
            or float(layer) != int(layer) or int(layer) < 0 or (top is not None and int(layer) > top):
        bound = f"from 0 to {top}" if top is not None else "of at least 0"
        raise DualviewError(f"The pruning layer must be a whole number {bound}, got {layer!r}.")
    return int(layer)


def validate_request(image, prompt, budget, *, method: str = "iwp", layer=None, params: dict | None = None,
                     num_visual: int | None = None, num_layers: int | None = None) -> Request:
    """Check one user request; return a :class:`Request` or raise DualviewError (one sentence).

    Args:
        image: PIL image, path, bytes or array (see :func:`dualview.images.load_image`).
        prompt: the question; budget: see :func:`dualview.budget.resolve_budget`.
        method: a registered method name; layer: decoder layer (None or blank: the model's default);
        params: the method's parameters by name (text or numbers; omitted ones take the defaults);
        num_visual: visual tokens of this image, when known (the budget becomes a count);
        num_layers: decoder layers of the model, when known (the layer is range-checked).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise DualviewError("The prompt is empty; type a question about the image.")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise DualviewError(f"The prompt has {len(prompt)} characters, more than the limit of {MAX_PROMPT_CHARS}.")
    method, budget, params = validate_choice(method, budget, params, num_visual)
    layer = parse_layer(layer, num_layers)
    return Request(image=load_image(image), prompt=prompt, budget=budget, method=method, layer=layer, params=params)


def validate_choice(method, budget, params: dict | None = None, num_visual: int | None = None) -> tuple[str, int | float, dict]:
    """The method name, the budget (a count when ``num_visual`` is known) and every parameter of
    the method, checked against the registry; a one-sentence DualviewError otherwise. What the app
    re-checks when only the choice of method, budget or parameters changes."""
    from dualview.methods import get_method

    chosen = get_method(method)
    return chosen.name, resolve_budget(budget, num_visual), chosen.check_params(params)
