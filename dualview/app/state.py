"""One visitor's state (kept in ``gr.State``): what was asked, the choices made on it, and the
results derived from them, each computed once and reused.

:class:`AppState` holds the request (image, prompt, method, budget, layer), the engine's
:class:`~dualview.engine.analysis.Analysis` of it (shared, read-only: moving the budget or the
method never reruns the model), every method's parameters, the example the image came from, the
forced patches and the inspected token. :class:`Derived` caches what is computed from them; a
change of request replaces it. Nothing here draws or knows about Gradio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dualview.answers import same_answer
from dualview.budget import resolve_budget
from dualview.methods import Method, all_methods, get_method
from dualview.selection import Selection, apply_overrides
from dualview.validation import Request

PRESETS = (0.353, 0.222, 0.111)
"""The paper's budgets, as fractions of the visual tokens kept."""
CURVE_FRACTIONS = (0.03, 0.06, 0.111, 0.16, 0.222, 0.29, 0.353, 0.45, 0.6, 0.75, 0.9, 1.0)
CURVE_METHODS = ("iwp-magnitude", "random", "fastv", "divprune")
"""Methods drawn in the error-vs-budget panel besides the selected one (oracle on request)."""
MAX_NEW_TOKENS = 8
"""Answers in the shapes world are at most three words; enough for a short answer elsewhere."""
ORACLE_MAX_LENGTH = 2048
"""The greedy oracle is O(S²) per step: it is skipped above this sequence length."""


def default_params() -> dict[str, dict]:
    """Every registered method's parameters at their defaults, by method name."""
    return {m.name: m.defaults for m in all_methods()}


@dataclass
class Answers:
    """Full and pruned answers measured in the same run."""

    full_text: str
    pruned_text: str
    full_prefill: float
    pruned_prefill: float
    full_logprob: float
    pruned_logprob: float
    prompt_tokens: int
    kept_tokens: int

    @property
    def agree(self) -> bool:
        return same_answer(self.full_text, self.pruned_text)

    def to_dict(self) -> dict:
        return {"full": self.full_text, "pruned": self.pruned_text, "agree": self.agree,
                "full_prefill_s": round(self.full_prefill, 4), "pruned_prefill_s": round(self.pruned_prefill, 4),
                "full_answer_logprob_full": round(self.full_logprob, 4),
                "full_answer_logprob_pruned": round(self.pruned_logprob, 4),
                "logprob_drop": round(self.full_logprob - self.pruned_logprob, 4),
                "prompt_tokens": self.prompt_tokens, "tokens_after_pruning": self.kept_tokens}


@dataclass
class Derived:
    """Results computed from an :class:`AppState`, each once (``None`` / empty: not yet).

    Attributes:
        layout: the token geometry as plain data (figures draw it); display: (the picture the maps
            draw underneath as a JPEG data URL, the picker's picture with the token grid, its scale:
            picker pixels per image pixel), made once;
        selection: the chosen method's Selection; pcmmr / classic: the traced PC-MMR and classic
            MMR selections of the two animations; measured: (kept set, measures) of the last
            kept set measured; curves: (method, params) -> measure -> values over
            :meth:`AppState.curve_budgets`;
            projections: kind -> ``[Nv, 2]`` PCA; full_answer: (Answer, log p) with every token;
            answers: the last full vs pruned comparison, answers_for: the (kept set, layer) it was made
            for; method_answers: the every-method table;
            restoration: (kept set, layer, :class:`~dualview.engine.attribution.Restoration`) of the
            last "what brings the answer back" search; debugged: (kept set, query, debug measures)
            of the last kept set; figures: maps that depend only on the analysis and the query
            (and the inspected token), by key; drawn_query: the query the page's query maps show;
            compared_for / method_answers_for: the :meth:`AppState.choice_key` the kept-mask
            comparison / the every-method table were made for (None: not made); picker_shown: the
            :meth:`AppState.picker_key` of the picture the picker shows; last_click: when the
            last patch was picked (``time.monotonic()``).
    """

    layout: dict | None = None
    display: tuple | None = None
    selection: Selection | None = None
    pcmmr: Selection | None = None
    classic: Selection | None = None
    measured: tuple | None = None
    curves: dict = field(default_factory=dict)
    projections: dict = field(default_factory=dict)
    full_answer: tuple | None = None
    answers: Answers | None = None
    answers_for: tuple | None = None
    method_answers: list = field(default_factory=list)
    restoration: tuple | None = None
    debugged: tuple | None = None
    figures: dict = field(default_factory=dict)
    drawn_query: str | None = None
    compared_for: tuple | None = None
    method_answers_for: tuple | None = None
    picker_shown: tuple | None = None
    last_click: float = 0.0


@dataclass
class AppState:
    """One visitor's analysis and choices (see the module docstring).

    Attributes:
        model_name: the loaded model's name; request: the validated request (its ``params`` are
            the chosen method's); analysis: the engine's Analysis of (image, prompt, layer);
        params: every method's parameters, by method name; example: sidecar of a shipped example
            the image is, or None; forced_keep / forced_drop: the user's overrides (visual-token
            indices); selected: the inspected token; space_kind: what the PCA projects;
        prompt_tokens: the instruction tokens as text (what ``token:i`` of the query choice indexes);
        changed: the Run inputs (``"image"``, ``"prompt"``, ``"model"``, ``"layer"``) changed on
            the page since this analysis: every view still shows the analysed ones until Run.
    """

    model_name: str
    request: Request
    analysis: object
    params: dict
    example: dict | None = None
    forced_keep: list = field(default_factory=list)
    forced_drop: list = field(default_factory=list)
    selected: int = 0
    space_kind: str = "keys"
    prompt_tokens: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    derived: Derived = field(default_factory=Derived)

    # -- what was asked -------------------------------------------------------------------
    @property
    def num_visual(self) -> int:
        return self.analysis.num_visual

    @property
    def budget(self) -> int:
        return int(self.request.budget)

    @property
    def method(self) -> Method:
        return get_method(self.request.method)

    @property
    def layout(self) -> dict:
        """``Geometry.to_dict()`` of the analysed image (boxes, panels), made once."""
        if self.derived.layout is None:
            self.derived.layout = self.analysis.geometry.to_dict()
        return self.derived.layout

    def _display(self) -> tuple:
        if self.derived.display is None:
            from dualview.figures import display_image
            from dualview.figures.picker import picker_picture

            self.derived.display = (display_image(self.request.image), *picker_picture(self.request.image, self.layout))
        return self.derived.display

    @property
    def display_image(self) -> str:
        """The picture under every map (a JPEG data URL at display size), made once per analysis."""
        return self._display()[0]

    @property
    def picker_image(self):
        """The patch picker's picture: the image at the picker's size (tiny ones scaled up) with the
        token grid, the selected token and the forced patches marked (:meth:`token_at_display`
        maps clicks back)."""
        from dualview.figures.picker import mark_picker

        _, picture, scale = self._display()
        return mark_picker(picture, self.layout, scale, selected=self.selected, keep=self.forced_keep,
                           drop=self.forced_drop)

    def picker_key(self) -> tuple:
        """What the picker's marks show: the selected token and the forced patches."""
        return self.selected, tuple(self.forced_keep), tuple(self.forced_drop)

    def token_at_display(self, x: float, y: float) -> int | None:
        """:meth:`token_at` of a click at (x, y) on :attr:`picker_image` (its x and y scales differ
        when the picture is drawn stretched: ``figures.picker.display_stretch``)."""
        scale_x, scale_y = self._display()[2]
        return self.token_at(x / scale_x, y / scale_y)

    @property
    def query(self) -> str:
        """The query rows the magnitude and the debug measures use (``text | last | all | token:i``):
        the chosen method's ``query`` parameter, else the one the query control gives every method."""
        return self.params[self.request.method].get("query", self.params["iwp"]["query"])

    @property
    def prune_layer(self) -> int:
        """The decoder layer from which the chosen method prunes (not always the analysis layer)."""
        return self.method.prune_layer(self.analysis)

    def select(self, method: str | Method, budget=None) -> Selection:
        """``method``'s selection with this state's parameters at ``budget`` (default: the request's)."""
        method = get_method(method)
        return method.select(self.analysis, self.budget if budget is None else budget, **self.params[method.name])

    # -- selections -----------------------------------------------------------------------
    def reselect(self) -> None:
        """The chosen method's selection for the current request (no model call); the animations'
        traces and the measures follow on demand."""
        self.derived.selection = self.select(self.method)
        self.derived.pcmmr = self.derived.classic = self.derived.measured = None

    @property
    def selection(self) -> Selection:
        if self.derived.selection is None:
            self.reselect()
        return self.derived.selection

    def trace(self, which: str) -> Selection:
        """The traced selection an animation shows: ``"pcmmr"`` (the ``iwp`` method) or ``"classic"``
        (``mmr``), at the current budget with this state's parameters; computed when first shown."""
        name = {"pcmmr": "iwp", "classic": "mmr"}[which]
        cached = getattr(self.derived, which)
        if cached is None:
            cached = self.selection if self.request.method == name else self.select(name)
            setattr(self.derived, which, cached)
        return cached

    def kept(self) -> list[int]:
        """Kept visual tokens in selection order, with the user's forced keeps / drops applied."""
        return apply_overrides(self.selection.kept.tolist(), self.forced_keep, self.forced_drop)

    def rounds(self) -> np.ndarray:
        """``[Nv]`` round (0-based) that kept each token, −1 dropped, ``FORCED_KEEP_ROUND`` (−2) kept
        only because the user forced it (no round took it)."""
        from dualview.figures.maps import FORCED_KEEP_ROUND

        rounds = self.selection.round_of(self.num_visual).numpy().copy()
        rounds[self.forced_drop] = -1
        for i in self.forced_keep:
            if rounds[i] < 0:
                rounds[i] = FORCED_KEEP_ROUND
        return rounds

    def measures(self) -> dict:
        """``Analysis.measures`` of the current kept set, computed once per kept set."""
        key = tuple(sorted(self.kept()))
        if self.derived.measured is None or self.derived.measured[0] != key:
            self.derived.measured = (key, self.analysis.measures(self.kept()))
        return self.derived.measured[1]

    def answers_current(self) -> bool:
        """Whether the shown answers were made for the current kept set and pruning layer."""
        return self.derived.answers_for == (tuple(sorted(self.kept())), self.prune_layer)

    def debug_measures(self) -> dict:
        """``Analysis.debug_measures`` of the current kept set and query, computed once per pair."""
        key = (tuple(sorted(self.kept())), self.query)
        if self.derived.debugged is None or self.derived.debugged[:2] != key:
            self.derived.debugged = (*key, self.analysis.debug_measures(self.kept(), self.query))
        return self.derived.debugged[2]

    def figure(self, key: tuple, make):
        """A figure that depends only on ``key`` (and this analysis), drawn once."""
        if key not in self.derived.figures:
            self.derived.figures[key] = make()
        return self.derived.figures[key]

    def choice_key(self) -> tuple:
        """What a view made on demand from this analysis depends on besides it: the budget and
        every method's parameters (the comparison and the every-method table record it)."""
        return self.budget, tuple(sorted((m, tuple(sorted(p.items()))) for m, p in self.params.items()))

    def mark_changed(self, which: str, changed: bool) -> None:
        """Record that the Run input ``which`` now differs (``changed``) or again equals the analysed one."""
        if changed and which not in self.changed:
            self.changed.append(which)
        elif not changed and which in self.changed:
            self.changed.remove(which)

    # -- curves ---------------------------------------------------------------------------
    def curve_budgets(self) -> list[int]:
        return sorted({resolve_budget(f, self.num_visual) for f in CURVE_FRACTIONS})

    def _curve(self, method: str) -> dict:
        """Every measure of ``method``'s kept set at each curve budget (``Analysis.measures`` and the
        kept attention mass of the chosen query rows): one selection at the largest budget and its
        prefixes when the registry declares the method nested, else one per budget."""
        chosen, budgets = get_method(method), self.curve_budgets()
        if chosen.nested:
            order = self.select(chosen, budgets[-1]).kept
            kept_sets = [order[:budget] for budget in budgets]
        else:
            kept_sets = [self.select(chosen, budget).kept for budget in budgets]
        result: dict = {}
        for kept in kept_sets:
            for name, value in self.analysis.measures(kept, self.query).items():
                result.setdefault(name, []).append(value)
        return result

    def _curve_id(self, method: str) -> tuple:
        return (method, tuple(sorted(self.params[method].items())), self.query)

    def curve_methods(self, with_oracle: bool) -> list[str]:
        """The selected method first, then the comparison methods (and the oracle on request, when
        the sequence is short enough for it)."""
        others = list(CURVE_METHODS)
        if with_oracle and self.analysis.prepared.length <= ORACLE_MAX_LENGTH:
            others.append("oracle")
        return [self.request.method] + [m for m in others if m != self.request.method]

    def curves(self, with_oracle: bool = False) -> dict:
        """Error-vs-budget curves, method -> measure -> values; each (method, parameters) is
        computed once per analysis."""
        for method in self.curve_methods(with_oracle):
            if self._curve_id(method) not in self.derived.curves:
                self.derived.curves[self._curve_id(method)] = self._curve(method)
        return {m: self.derived.curves[self._curve_id(m)] for m in self.curve_methods(with_oracle)}

    # -- token space ----------------------------------------------------------------------
    def projection(self, kind: str) -> np.ndarray:
        """``[Nv, 2]`` PCA of the visual tokens' keys or values (heads concatenated), cached."""
        from dualview.figures import project_2d

        if kind not in self.derived.projections:
            source = self.analysis.visual_keys if kind == "keys" else self.analysis.visual_values
            self.derived.projections[kind] = project_2d(source.permute(1, 0, 2).reshape(self.num_visual, -1).cpu().numpy())
        return self.derived.projections[kind]

    # -- evidence and picking -------------------------------------------------------------
    def evidence_boxes(self) -> list:
        """The example's evidence boxes in this image's pixels (empty without an example)."""
        if not self.example:
            return []
        scale = self.request.image.width / float(self.example.get("size", self.request.image.width))
        return [[v * scale for v in box] for box in self.example.get("evidence", [])]

    def evidence_tokens(self) -> list[int]:
        """Visual tokens whose box overlaps an evidence box of the example (empty without one)."""
        from dualview.engine.attribution import evidence_tokens

        return evidence_tokens(self.analysis.geometry, self.evidence_boxes()).tolist()

    def evidence_recall(self) -> float | None:
        """Share of the evidence tokens the kept set holds (None without evidence; method.md §8.5)."""
        from dualview.attribution import evidence_recall

        return evidence_recall(self.kept(), self.evidence_tokens())

    def token_at(self, x: float, y: float) -> int | None:
        """The visual token whose box holds pixel (x, y) of the original image (first view first)."""
        boxes = np.asarray(self.layout["boxes"], dtype=float)
        inside = (boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y) & (y < boxes[:, 3])
        hits = np.nonzero(inside)[0]
        return int(hits[0]) if hits.size else None

    def toggle_forced(self, token: int, mode: str) -> None:
        """In ``"force keep"`` / ``"force drop"`` mode, toggle ``token`` in that set (and out of the other)."""
        if mode not in ("force keep", "force drop"):
            return
        mine, other = (self.forced_keep, self.forced_drop) if mode == "force keep" else (self.forced_drop, self.forced_keep)
        if token in mine:
            mine.remove(token)
        else:
            mine.append(token)
            if token in other:
                other.remove(token)

    def kept_tensor(self) -> torch.Tensor:
        return torch.tensor(self.kept(), dtype=torch.long)
