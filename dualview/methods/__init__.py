"""Token-selection methods, one module per method; each registers itself with ``@register``.

Adding a method = adding one module to this package (it is imported by :func:`load_all`).
"""

from __future__ import annotations

import importlib
import pkgutil

from dualview.methods.registry import CAPTURES, Method, Param, ScoringInputs, all_methods, get_method, method_names, register

__all__ = ["CAPTURES", "Method", "Param", "ScoringInputs", "all_methods", "get_method", "method_names", "register", "load_all"]


def load_all() -> None:
    """Import every method module of this package (registering them); cheap after the first call."""
    for info in pkgutil.iter_modules(__path__):
        if info.name != "registry":
            importlib.import_module(f"{__name__}.{info.name}")
