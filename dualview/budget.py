"""The one place a budget becomes a token count.

A budget is what a user types or passes: a token count, a fraction of the visual tokens, or a
percentage. :func:`resolve_budget` is used by the selection rules, the methods, the engine, the
validator, the CLI and the benches alike, so every face accepts and refuses the same inputs with
the same sentence.
"""

from __future__ import annotations

import math
import numbers

from dualview.errors import DualviewError

__all__ = ["resolve_budget", "as_scalar"]


def as_scalar(value):
    """numpy / torch scalars (0-d arrays and tensors too) as Python numbers; anything else as is.
    Every user-facing number (budgets, layers, method parameters) is unwrapped here."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def resolve_budget(budget, num_visual: int | None = None) -> int | float:
    """A budget as a token count (int) or, without ``num_visual``, possibly a fraction (float).

    Accepted: an int ≥ 1 (a count); a float in (0, 1] (a fraction of Nv); an integral float > 1
    (a count, as sliders send); numpy / torch scalars of these; a string holding any of these or
    a percentage such as ``"35.3%"``. With ``num_visual`` (Nv, ≥ 1) the result is the count
    ``M = round(f · Nv)`` (at least 1) for a fraction, and a count must satisfy ``1 ≤ M ≤ Nv``.

    Raises:
        DualviewError: one sentence saying what is wrong and what is allowed (also a ValueError).
    """
    original = budget
    budget = as_scalar(budget)
    if isinstance(budget, str):
        text = budget.strip()
        try:
            if text.endswith("%"):
                budget = float(text[:-1]) / 100.0
                if budget > 1.0:
                    raise DualviewError(f"A budget of {original!r} keeps more than all visual tokens; use at most 100%.")
            elif text.lstrip("+-").isdigit():
                budget = int(text)
            else:
                budget = float(text)
        except DualviewError:
            raise
        except ValueError:
            raise DualviewError(f"Budget {original!r} is not a number; give a token count (e.g. 69), "
                                "a fraction (e.g. 0.353) or a percentage (e.g. 35.3%).") from None
    if isinstance(budget, bool) or not isinstance(budget, (numbers.Integral, numbers.Real)):
        raise DualviewError(f"Budget must be a token count or a fraction, not {type(original).__name__}.")
    if isinstance(budget, numbers.Integral):
        budget = int(budget)
    else:
        budget = float(budget)
        if not math.isfinite(budget):
            raise DualviewError(f"Budget {original!r} is not a finite number.")
        if budget > 1.0 and budget == int(budget):
            budget = int(budget)
        elif not 0.0 < budget <= 1.0:
            raise DualviewError(f"Budget {original!r} is neither a token count ≥ 1 nor a fraction in (0, 1] "
                                "(a percentage in (0%, 100%]).")
    if isinstance(budget, int) and budget < 1:
        raise DualviewError(f"Budget {original!r} keeps no token; keep at least 1 visual token.")
    if num_visual is None:
        return budget
    if num_visual < 1:
        raise DualviewError("There are no visual tokens to select from.")
    count = max(1, round(budget * num_visual)) if isinstance(budget, float) else budget
    if count > num_visual:
        raise DualviewError(f"Budget {count} is more than the {num_visual} visual tokens of this image; "
                            f"use at most {num_visual}.")
    return count
