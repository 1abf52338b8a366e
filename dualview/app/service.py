"""What the app computes, without any UI: the shared model and one user's workspace.

:class:`ModelHolder` loads each model once and shares it between users; every call into a model
goes through its lock (pruning hooks are installed on the shared modules, so two generations must
not overlap). :class:`Workspace` is one user's state (kept in ``gr.State``): the analysis of the
current image and prompt (from the engine's cache, so moving the budget or the method never reruns
the model), the selections, the curves, the answers. Everything it returns is plain data that
:mod:`dualview.figures` draws.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from dualview.errors import DualviewError
from dualview.selection import Selection, mmr, pc_mmr
from dualview.validation import Request

PRESETS = (0.353, 0.222, 0.111)
"""The paper's budgets, as fractions of the visual tokens kept."""
CURVE_FRACTIONS = (0.03, 0.06, 0.111, 0.16, 0.222, 0.29, 0.353, 0.45, 0.6, 0.75, 0.9, 1.0)
CURVE_METHODS = ("iwp-magnitude", "random", "fastv", "divprune")
"""Methods drawn in the error-vs-budget panel besides the selected one (oracle on request)."""
MAX_NEW_TOKENS = 8
"""Answers in the shapes world are at most three words; enough for a short answer elsewhere."""


def budget_count(fraction: float, num_visual: int) -> int:
    """A fraction of Nv as a token count, at least 1 (``selection.resolve_budget`` semantics)."""
    return max(1, round(fraction * num_visual))


class ModelHolder:
    """Loaded models by name, loaded once and shared; ``lock`` serialises calls into a model.

    At most ``capacity`` models stay loaded (least recently used first out), so visitors naming
    model after model cannot fill the server's memory.
    """

    def __init__(self, device: str | None = None, capacity: int = 2):
        self.device = device
        self.capacity = capacity
        self.lock = threading.Lock()
        self._sessions: OrderedDict = OrderedDict()

    def get(self, name: str):
        """The session for ``name``, loading it on first use (DualviewError when it cannot load)."""
        import dualview

        name = (name or "").strip() or "builtin"
        with self.lock:
            if name not in self._sessions:
                try:
                    self._sessions[name] = dualview.load(name, device=self.device)
                except DualviewError:
                    raise
                except MemoryError:
                    raise DualviewError(f"Model '{name}' does not fit in memory; the previous model stays loaded.") from None
                except Exception as error:  # noqa: BLE001 - a model that cannot load must not take the app down
                    raise DualviewError(f"Model '{name}' could not be loaded ({type(error).__name__}); "
                                        "the previous model stays loaded.") from None
                while len(self._sessions) > self.capacity:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(name)
            return self._sessions[name]


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
        return self.full_text.strip().lower() == self.pruned_text.strip().lower()

    def to_dict(self) -> dict:
        return {"full": self.full_text, "pruned": self.pruned_text, "agree": self.agree,
                "full_prefill_s": round(self.full_prefill, 4), "pruned_prefill_s": round(self.pruned_prefill, 4),
                "full_answer_logprob_full": round(self.full_logprob, 4),
                "full_answer_logprob_pruned": round(self.pruned_logprob, 4),
                "logprob_drop": round(self.full_logprob - self.pruned_logprob, 4),
                "prompt_tokens": self.prompt_tokens, "tokens_after_pruning": self.kept_tokens}


@dataclass
class Workspace:
    """One user's analysis and everything derived from it (lives in ``gr.State``).

    Attributes:
        model_name, request: what was asked; analysis: the engine's Analysis (shared cache object,
            read-only); layout: ``Geometry.to_dict()``; example: sidecar of a shipped example or None.
        selection: the chosen method's Selection; pcmmr / classic: PC-MMR's and classic MMR's traced
            selections at the same budget (the two animations); forced_keep / forced_drop: user
            overrides; selected: the inspected token; curves: method -> metric -> values.
    """

    model_name: str
    request: Request
    analysis: object
    layout: dict
    example: dict | None = None
    selection: Selection | None = None
    pcmmr: Selection | None = None
    classic: Selection | None = None
    forced_keep: list = field(default_factory=list)
    forced_drop: list = field(default_factory=list)
    selected: int = 0
    curves: dict = field(default_factory=dict)
    curve_params: tuple | None = None  # (method, params) the selected method's curve was computed for
    projections: dict = field(default_factory=dict)
    space_kind: str = "keys"  # what the token-space PCA projects: "keys" or "values"
    answers: Answers | None = None
    full_answer: object = None
    method_answers: list = field(default_factory=list)
    _measured: tuple | None = None

    @property
    def num_visual(self) -> int:
        return self.analysis.num_visual

    @property
    def budget(self) -> int:
        return int(self.request.budget)

    def params(self, method: str | None = None) -> dict:
        """The selection parameters that ``method`` (default: the request's) accepts."""
        method = method or self.request.method
        if method == "iwp":
            return {"b0": self.request.b0, "growth": self.request.growth, "lam": self.request.lam}
        return {}

    # -- selections ------------------------------------------------------------------------
    def reselect(self) -> None:
        """Recompute the selections for the current request (no model call)."""
        a, r = self.analysis, self.request
        self.selection = a.select(r.method, r.budget, **self.params())
        # the animations read the analysis's cached [Nv, Nv] duplication matrix (no recomputed blocks)
        self.pcmmr = (self.selection if r.method == "iwp" else
                      pc_mmr(a.magnitude, a.duplication, r.budget, b0=r.b0, growth=r.growth, lam=r.lam))
        self.classic = self.selection if r.method == "mmr" else mmr(a.magnitude, a.duplication, r.budget)

    def kept(self) -> list[int]:
        """Kept visual tokens in selection order, with the user's forced keeps / drops applied."""
        base = [int(i) for i in self.selection.kept if int(i) not in self.forced_drop]
        return base + [i for i in self.forced_keep if i not in base]

    def rounds(self) -> np.ndarray:
        """``[Nv]`` round that kept each token (forced keeps: one past the last round), −1 dropped."""
        rounds = self.selection.round_of(self.num_visual).numpy().copy()
        rounds[self.forced_drop] = -1
        extra = len(self.selection.chunks)
        for i in self.forced_keep:
            if rounds[i] < 0:
                rounds[i] = extra
        return rounds

    def measures(self, kept) -> dict:
        """Weight error, effective rank of W_S and attention-output error of a kept set."""
        a = self.analysis
        return {"weight_error": a.weight_error(kept), "effective_rank": a.effective_rank(kept),
                "visual_weight_error": a.weight_error(kept, scope="visual"),
                "visual_effective_rank": a.effective_rank(kept, scope="visual"),
                "attention_error": a.attention_error(kept)}

    def current_measures(self) -> dict:
        """:meth:`measures` of the current kept set, computed once per kept set."""
        key = tuple(sorted(self.kept()))
        if self._measured is None or self._measured[0] != key:
            self._measured = (key, self.measures(self.kept()))
        return self._measured[1]

    # -- curves ----------------------------------------------------------------------------
    def curve_budgets(self) -> list[int]:
        return sorted({budget_count(f, self.num_visual) for f in CURVE_FRACTIONS})

    def _curve(self, method: str) -> dict:
        a = self.analysis
        result = {}
        for budget in self.curve_budgets():
            kept = a.select(method, budget, **self.params(method)).kept
            for name, value in self.measures(kept).items():
                result.setdefault(name, []).append(value)
        return result

    def _curve_key(self) -> tuple:
        return (self.request.method, tuple(sorted(self.params().items())))

    def curves_current(self, with_oracle: bool = False) -> bool:
        """Whether every curve to draw is computed for the current method and parameters."""
        wanted = CURVE_METHODS + (("oracle",) if with_oracle else ())
        return all(m in self.curves for m in wanted) and self.curve_params == self._curve_key()

    def update_curves(self, with_oracle: bool = False) -> dict:
        """Error-vs-budget curves of the selected method, the comparison methods and (on request)
        the oracle; only the selected method's curve is recomputed when it or its parameters change."""
        selected = self.request.method
        for method in CURVE_METHODS + (("oracle",) if with_oracle else ()):
            if method not in self.curves and method != selected:
                self.curves[method] = self._curve(method)  # parameter-free: computed once per analysis
        if self.curve_params != self._curve_key():
            if self.params() or selected not in self.curves:
                self.curves[selected] = self._curve(selected)
            self.curve_params = self._curve_key()
        order = [self.request.method] + [m for m in CURVE_METHODS + ("oracle",) if m != self.request.method]
        return {m: self.curves[m] for m in order if m in self.curves}

    # -- token space -----------------------------------------------------------------------
    def projection(self, kind: str) -> np.ndarray:
        """``[Nv, 2]`` PCA of the visual tokens' keys or values (heads concatenated), cached."""
        from dualview.figures import project_2d

        if kind not in self.projections:
            source = self.analysis.visual_keys if kind == "keys" else self.analysis.visual_values
            self.projections[kind] = project_2d(source.permute(1, 0, 2).reshape(self.num_visual, -1).numpy())
        return self.projections[kind]

    # -- answers ---------------------------------------------------------------------------
    def answer(self, holder: ModelHolder, session) -> Answers:
        """Full answer (cached per analysis) and the pruned answer of the current kept set, with
        the log-probability of the full answer under both token sets; all under the model lock."""
        r, a = self.request, self.analysis
        layer = a.prune_layer(r.method)
        kept = torch.tensor(self.kept(), dtype=torch.long)
        with holder.lock:
            if self.full_answer is None:
                full = session.answer(r.image, r.prompt, layer=a.layer, max_new_tokens=MAX_NEW_TOKENS)
                logprob = session.answer_logprob(r.image, r.prompt, full.text or " ", layer=a.layer)
                self.full_answer = (full, logprob)
            full, full_logprob = self.full_answer
            pruned = session.answer(r.image, r.prompt, keep=kept, layer=layer, max_new_tokens=MAX_NEW_TOKENS)
            pruned_logprob = session.answer_logprob(r.image, r.prompt, full.text or " ", keep=kept, layer=layer)
        self.answers = Answers(full.text, pruned.text, full.prefill_seconds, pruned.prefill_seconds,
                               full_logprob, pruned_logprob, pruned.prompt_tokens, pruned.kept_tokens)
        return self.answers

    def answer_every_method(self, holder: ModelHolder, session, methods: list[str]) -> list[list]:
        """Rows (method, kept, answer, agrees with full, weight error, prefill s) at the current budget."""
        r, a = self.request, self.analysis
        full_text = self.full_answer[0].text if self.full_answer else None
        rows = []
        for method in methods:
            if method == "oracle" and a.prepared.length > 2048:
                continue
            selection = a.select(method, r.budget, **self.params(method))
            with holder.lock:
                result = session.answer(r.image, r.prompt, keep=selection.kept, layer=a.prune_layer(method),
                                        max_new_tokens=MAX_NEW_TOKENS)
            agree = "" if full_text is None else ("yes" if result.text.strip().lower() == full_text.strip().lower() else "no")
            rows.append([method, int(selection.kept.numel()), result.text, agree,
                         round(a.weight_error(selection.kept), 4), round(result.prefill_seconds, 4)])
        self.method_answers = rows
        return rows

    # -- evidence --------------------------------------------------------------------------
    def evidence_tokens(self) -> list[int]:
        """Visual tokens whose box overlaps an evidence box of the example (empty without one)."""
        if not self.example or not self.example.get("evidence"):
            return []
        boxes = np.asarray(self.layout["boxes"], dtype=float)
        scale_x = self.request.image.width / float(self.example.get("size", self.request.image.width))
        scale_y = self.request.image.height / float(self.example.get("size", self.request.image.height))
        hits = np.zeros(len(boxes), dtype=bool)
        for x0, y0, x1, y1 in self.example["evidence"]:
            x0, x1, y0, y1 = x0 * scale_x, x1 * scale_x, y0 * scale_y, y1 * scale_y
            hits |= (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
        return np.nonzero(hits)[0].tolist()

    def evidence_boxes(self) -> list:
        if not self.example:
            return []
        scale = self.request.image.width / float(self.example.get("size", self.request.image.width))
        return [[v * scale for v in box] for box in self.example.get("evidence", [])]

    # -- the selected token ----------------------------------------------------------------
    def token_at(self, x: float, y: float) -> int | None:
        """The visual token whose box holds pixel (x, y) of the original image (first view first)."""
        boxes = np.asarray(self.layout["boxes"], dtype=float)
        inside = (boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y) & (y < boxes[:, 3])
        hits = np.nonzero(inside)[0]
        return int(hits[0]) if hits.size else None

    def token_numbers(self, token: int) -> dict:
        """The dual-form numbers of one token, for the teaching panel and the export."""
        a = self.analysis
        keys, values = a.visual_keys.double(), a.visual_values.double()  # [Hkv, Nv, d]
        dim = keys.shape[-1]
        self_logit = (keys[:, token] * keys[:, token]).sum(-1) / math.sqrt(dim)  # [Hkv]
        value_norm = values[:, token].norm(dim=-1)
        update_norm = torch.exp(self_logit / 2) * value_norm  # ‖ΔW_i‖ = √κ(k_i,k_i)·‖v_i‖ per head
        row = a.duplication[token].clone()
        row[token] = -1.0
        partner = int(torch.argmax(row))
        rounds = self.rounds()
        final_scores = self.pcmmr.scores[-1] if self.pcmmr and self.pcmmr.scores else None
        return {
            "token": token,
            "kernel_logit": float(a.kernel_logit[token]),
            "kappa": float(math.exp(min(float(a.kernel_logit[token]), 700.0))),
            "value_norm": float(a.value_norm[token]),
            "magnitude": float(a.magnitude[token]),
            "update_norm_log": float(torch.log(update_norm).mean()),
            "token_duplication": float(a.token_duplication[token]),
            "partner": partner,
            "partner_duplication": float(a.duplication[token, partner]),
            "round": int(rounds[token]),
            "penalised_score": None if final_scores is None or math.isnan(float(final_scores[token]))
            else float(final_scores[token]),
        }


def new_workspace(analysis, request: Request, model_name: str, example: dict | None) -> Workspace:
    """A workspace for a validated request and its analysis, with the selections made."""
    workspace = Workspace(model_name=model_name, request=request, analysis=analysis,
                          layout=analysis.geometry.to_dict(), example=example)
    workspace.reselect()
    return workspace
