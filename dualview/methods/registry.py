"""The method registry: ``@register("name")`` on a selection function, one module per method.

A method is ``select(analysis, count, **params) -> Selection``: it picks ``count`` of the
analysis's visual tokens (indices 0..Nv-1) and returns them in selection order. It also says at
which decoder layer its kept set is applied (``layer``): the analysis layer (default), a fixed
layer such as 0 (before the language model), or a function of the analysis.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from dualview.errors import DualviewError


def analysis_layer(analysis) -> int:
    """Prune at the layer that was analysed (method.md §5)."""
    return analysis.layer


@dataclass(frozen=True)
class Method:
    """A registered selection method.

    Attributes:
        name: registry name; ``summary``: first line of its docstring; ``params``: names and
        defaults of its keyword parameters.
    """

    name: str
    function: Callable
    layer: Callable[[object], int]
    summary: str
    params: dict

    def prune_layer(self, analysis) -> int:
        """The decoder layer from which this method's kept set applies."""
        return self.layer(analysis)

    def select(self, analysis, count: int, **params):
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            allowed = ", ".join(self.params) or "none"
            raise DualviewError(f"Method '{self.name}' has no parameter {', '.join(unknown)} (its parameters: {allowed}).")
        return self.function(analysis, count, **params)


_METHODS: dict[str, Method] = {}


def register(name: str, layer: int | Callable[[object], int] = analysis_layer):
    """Register ``function(analysis, count, **params) -> Selection`` as method ``name``.

    ``layer``: where the method prunes; an int (e.g. 0: before the language model) or a function
    of the analysis (default: the analysis layer).
    """

    def decorate(function):
        signature = inspect.signature(function)
        params = {p.name: p.default for p in list(signature.parameters.values())[2:]}
        where = layer if callable(layer) else (lambda analysis, fixed=layer: fixed)
        summary = (inspect.getdoc(function) or inspect.getdoc(inspect.getmodule(function)) or "").split("\n")[0]
        _METHODS[name] = Method(name, function, where, summary, params)
        return function

    return decorate


def get_method(name: str) -> Method:
    """The registered method ``name``, or a DualviewError listing the known ones."""
    from dualview.methods import load_all

    load_all()
    if name not in _METHODS:
        raise DualviewError(f"Unknown method '{name}'; known methods: {', '.join(method_names())}.")
    return _METHODS[name]


def method_names() -> list[str]:
    """Registered method names, ``iwp`` first, then alphabetical."""
    from dualview.methods import load_all

    load_all()
    return sorted(_METHODS, key=lambda n: (n != "iwp", n))
