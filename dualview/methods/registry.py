"""The method registry: the only source of a method's name, parameters, pruning layer and needs.

A method is one module of this package with one ``@register(...)`` function
``select(inputs, count, **params) -> Selection``: it picks ``count`` of the visual tokens
(indices 0..Nv-1 into :attr:`ScoringInputs.num_visual`) and returns them in selection order.
Its registration declares:

- ``params``: each keyword parameter as a :class:`Param` (default, bounds, one-line meaning).
  Validation, the CLI's flags and help, the app's controls, the animations and the benches all
  read these declarations; the function itself declares no defaults.
- ``layer``: the decoder layer from which its kept set applies: the analysis layer (default),
  a fixed layer (0: before the language model), or a function of the inputs.
- ``needs``: what the engine must capture for it (:data:`CAPTURES`), so that a selection made
  inside a pruned forward pass can be refused up front when it lacks them.

Methods receive a :class:`ScoringInputs` (the engine's ``Analysis`` is one), never a model.
Pattern after lmms-eval's / inseq's registries: names are registry keys, unknown names give one
sentence listing the known ones.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

from dualview.budget import as_scalar, resolve_budget
from dualview.errors import DualviewError

CAPTURES = ("projections", "embeddings", "fastv_attention")
"""What a method may need: ``projections`` (q/k/v of the analysis layer, hence magnitude and
duplication), ``embeddings`` (the language model's input embeddings, layer 0),
``fastv_attention`` (attention received at FastV's layer K − 1)."""


class ScoringInputs(Protocol):
    """What a method may read (the engine's :class:`dualview.engine.analysis.Analysis`).

    Shapes: Nv visual tokens, S sequence positions, Hkv KV heads, d head dim, D model width.
    Visual-token indices (0..Nv-1) follow ``geometry``.
    """

    layer: int  # the analysis layer (decoder layer whose q/k/v were captured)
    fastv_layer: int  # FastV's scoring layer K − 1

    @property
    def num_visual(self) -> int: ...  # Nv

    @property
    def magnitude(self) -> Tensor: ...  # [Nv] information magnitude (method.md §2), q_T from the text rows

    def magnitude_for(self, query: str) -> Tensor: ...  # [Nv] the same from query rows `query` (method.md §8.1)

    @property
    def duplication_blocks(self): ...  # blocks of the [Nv, Nv] duplication S̄² (method.md §3)

    @property
    def attention_received(self) -> Tensor: ...  # [Nv] FastV's score (needs fastv_attention)

    @property
    def input_embeddings(self) -> Tensor: ...  # [Nv, D] LM input embeddings (needs embeddings)

    @property
    def prompt_embeddings(self) -> Tensor: ...  # [T, D] instruction tokens' LM input embeddings

    @property
    def geometry(self): ...  # dualview.engine.geometry.Geometry of the visual tokens

    @property
    def sequence_kv(self) -> tuple[Tensor, Tensor, Tensor]: ...  # k_post [Hkv,S,d], v [Hkv,S,dv], visual positions [Nv]


@dataclass(frozen=True)
class Param:
    """One keyword parameter of a method: a number within bounds, or a choice among forms.

    Attributes:
        name: keyword name (the CLI's ``--param NAME=VALUE``); default: the paper's value (its
            type, int, float or str, is the parameter's type); low, high: inclusive bounds of a
            numeric parameter (None for a choice);
        help: one line saying what it means; label: short symbol for the UI (default: name);
        choices: the accepted forms of a choice parameter (e.g. ``("text", "last", "all",
            "token:i")``), empty for a numeric one; parse: for a choice, ``parse(text) -> value``
            returning the canonical form or raising a one-sentence DualviewError.
    """

    name: str
    default: int | float | str
    low: int | float | None
    high: int | float | None
    help: str
    label: str = ""
    choices: tuple[str, ...] = ()
    parse: Callable[[str], str] | None = None

    @classmethod
    def choice(cls, name: str, default: str, choices: tuple[str, ...], parse: Callable[[str], str], help: str,
               label: str = "") -> "Param":
        """A choice-valued parameter: ``parse`` turns text into the canonical value (or refuses it)."""
        return cls(name, default, None, None, help, label, tuple(choices), parse)

    @property
    def is_choice(self) -> bool:
        return bool(self.choices)

    @property
    def integer(self) -> bool:
        return isinstance(self.default, int) and not self.is_choice

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def bounds(self) -> str:
        """``low..high`` as text, or the accepted forms of a choice joined by ``|``."""
        if self.is_choice:
            return "|".join(self.choices)
        return f"{self.low:g}..{self.high:g}" if not self.integer else f"{self.low}..{self.high}"

    def check(self, value, method: str) -> int | float | str:
        """``value`` as this parameter's type within its bounds (a choice: parsed to its canonical
        form), or a one-sentence DualviewError. Strings are parsed (CLI and API send text)."""
        if self.is_choice:
            return self.parse(value)
        original = value
        value = as_scalar(value)
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                value = None
        kind = "a whole number" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
                or (self.integer and float(value) != int(value)) or not self.low <= float(value) <= self.high:
            low, high = self.bounds.split("..")
            meaning = f"{self.label}, {self.help}" if self.label else self.help
            raise DualviewError(f"{method}'s {self.name} ({meaning}) must be {kind} from {low} to {high}, "
                                f"got {original!r}.")
        return int(value) if self.integer else float(value)


def _query_param() -> Param:
    from dualview.queries import DEFAULT_QUERY, QUERY_CHOICES, canonical_query

    return Param.choice("query", DEFAULT_QUERY, QUERY_CHOICES, canonical_query,
                        "query rows whose mean is q_T in the magnitude: the instruction tokens (text, the paper's), "
                        "the last prompt position (last), every non-image position (all) or instruction token i "
                        "(token:i); method.md §8.1", "q")


QUERY = _query_param()
"""The ``query`` parameter of every method whose scores read ``q_T`` (method.md §2, §8.1)."""


def analysis_layer(inputs) -> int:
    """Prune at the layer that was analysed (method.md §5)."""
    return inputs.layer


@dataclass(frozen=True)
class Method:
    """A registered selection method (see the module docstring).

    Attributes:
        name: registry name; summary: first line of its docstring; params: its :class:`Param`s;
        needs: subset of :data:`CAPTURES`; function: ``select(inputs, count, **params)``;
        nested: whether the kept set for a budget is always the first tokens of the kept set for any
        larger budget (greedy and top-k rules, PC-MMR); then every budget of a curve is a prefix of
        one selection (a test checks the claim for every method that makes it).
    """

    name: str
    function: Callable
    layer: Callable[[ScoringInputs], int]
    summary: str
    params: tuple[Param, ...]
    needs: frozenset = field(default_factory=frozenset)
    nested: bool = False

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def defaults(self) -> dict:
        """Every parameter's default, by name."""
        return {p.name: p.default for p in self.params}

    @property
    def numeric_defaults(self) -> dict:
        """The numeric parameters' defaults, by name: the selection algorithm's own settings
        (choice parameters such as ``query`` choose its inputs instead)."""
        return {p.name: p.default for p in self.params if not p.is_choice}

    def check_params(self, given: Mapping | None = None) -> dict:
        """Every parameter, checked: ``given`` values (strings are parsed) over the defaults.

        Raises DualviewError for an unknown name or a value out of bounds (one sentence)."""
        given = dict(given or {})
        unknown = sorted(set(given) - {p.name for p in self.params})
        if unknown:
            allowed = ", ".join(p.name for p in self.params) or "none"
            raise DualviewError(f"Method '{self.name}' has no parameter {', '.join(unknown)} (its parameters: {allowed}).")
        return {p.name: p.check(given[p.name], self.name) if p.name in given else p.default for p in self.params}

    def prune_layer(self, inputs: ScoringInputs) -> int:
        """The decoder layer from which this method's kept set applies."""
        return self.layer(inputs)

    def select(self, inputs: ScoringInputs, budget, **params):
        """The kept visual tokens for ``budget`` (count, fraction or percentage, resolved by
        :func:`dualview.budget.resolve_budget`), as a :class:`dualview.selection.Selection`."""
        count = resolve_budget(budget, inputs.num_visual)
        return self.function(inputs, count, **self.check_params(params))


_METHODS: dict[str, Method] = {}


def register(name: str, *, params: tuple[Param, ...] = (), layer: int | Callable[[ScoringInputs], int] = analysis_layer,
             needs: tuple[str, ...] = ("projections",), nested: bool = True):
    """Register ``function(inputs, count, **params) -> Selection`` as method ``name``.

    ``params``: its parameters (the function's keywords must be exactly these, without defaults);
    ``layer``: where it prunes (an int, or a function of the inputs; default the analysis layer);
    ``needs``: what it reads, from :data:`CAPTURES`; ``nested``: see :class:`Method` (False for a
    rule whose kept sets at two budgets need not be prefixes of one another, e.g. a spatial grid).
    """
    unknown = set(needs) - set(CAPTURES)
    if unknown:
        raise ValueError(f"unknown captures {sorted(unknown)}; known: {CAPTURES}")

    def decorate(function):
        keywords = list(inspect.signature(function).parameters.values())[2:]
        if [p.name for p in keywords] != [p.name for p in params] or any(
                p.default is not inspect.Parameter.empty for p in keywords):
            raise ValueError(f"method '{name}': the function's keywords must be {[p.name for p in params]} "
                             "without defaults (defaults live in the Param declarations)")
        where = layer if callable(layer) else (lambda inputs, fixed=layer: fixed)
        summary = (inspect.getdoc(function) or inspect.getdoc(inspect.getmodule(function)) or "").split("\n")[0]
        _METHODS[name] = Method(name, function, where, summary, tuple(params), frozenset(needs), nested)
        return function

    return decorate


def get_method(name) -> Method:
    """The registered method ``name`` (a Method is returned as is), or a DualviewError listing the known ones."""
    if isinstance(name, Method):
        return name
    from dualview.methods import load_all

    load_all()
    if not isinstance(name, str) or name not in _METHODS:
        raise DualviewError(f"Unknown method {name!r}; known methods: {', '.join(method_names())}.")
    return _METHODS[name]


def method_names() -> list[str]:
    """Registered method names, ``iwp`` first, then alphabetical."""
    from dualview.methods import load_all

    load_all()
    return sorted(_METHODS, key=lambda n: (n != "iwp", n))


def all_methods() -> list[Method]:
    """Every registered method, in :func:`method_names` order."""
    return [_METHODS[n] for n in method_names()]
