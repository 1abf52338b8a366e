"""The dual form of attention, on tensors: scores, duplication and approximation errors.

Softmax attention of one head is an implicit linear layer ``out(q) = η(q) φ(q) W`` with
``W = Σ_i ΔW_i``, ``ΔW_i = φ(k_i)ᵀ v_i`` and the exponential kernel
``κ(x, y) = exp(x·y / √d) = ⟨φ(x), φ(y)⟩`` (``../shared/docs/method.md`` §1). φ is
infinite-dimensional, so ``W`` is never formed: everything here uses the kernel trick.

Every function is batch-free and works on one layer:
H query heads, Hkv key/value heads (grouped-query attention: query head h reads KV head
``h // (H / Hkv)``), N tokens, T text tokens, R query rows (method.md §8.1), d head dim,
dv value dim.
Nothing here knows about models or UIs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "kernel_logits",
    "value_norms",
    "update_log_norms",
    "update_share",
    "magnitude",
    "DuplicationBlocks",
    "duplication",
    "token_duplication",
    "keep_mask",
    "ImplicitWeight",
    "WeightMeasures",
    "weight_error",
    "weight_error_per_head",
    "weight_spectrum",
    "effective_rank",
    "stable_rank",
    "attention_output_error",
    "attention_weights",
    "kept_attention_mass",
    "AttentionSplit",
    "attention_split",
    "greedy_oracle",
]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32, or float64 when the input already is float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_heads(q_heads: int, kv_heads: int) -> int:
    if kv_heads < 1 or q_heads % kv_heads:
        raise ValueError(f"{q_heads} query heads cannot share {kv_heads} key/value heads evenly")
    return q_heads // kv_heads


def _check_kv(k: Tensor, v: Tensor) -> None:
    if k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"k and v must be [Hkv, N, d], got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} disagree on heads or tokens")


# --- information magnitude (method.md §2) ------------------------------------------------------


def kernel_logits(q_text: Tensor, k: Tensor) -> Tensor:
    """Log of the kernel between the mean text query and every key: ``q_T · k_i / √d``.

    Args:
        q_text: ``[H, T, d]`` queries of the text tokens (pre-RoPE for the magnitude).
        k: ``[Hkv, N, d]`` keys (pre-RoPE for the magnitude).
    Returns:
        ``[H, N]`` float32 (float64 for float64 input); query head h paired with KV head
        ``h // (H / Hkv)``. ``κ(q_T, k_i) = exp(logit)``, never exponentiated here.
    """
    if q_text.dim() != 3 or k.dim() != 3 or q_text.shape[-1] != k.shape[-1]:
        raise ValueError(f"q_text must be [H, T, d] and k [Hkv, N, d], got {tuple(q_text.shape)}, {tuple(k.shape)}")
    if q_text.shape[1] == 0:
        raise ValueError("q_text holds no text token")
    dtype = _compute_dtype(q_text)
    group = _check_heads(q_text.shape[0], k.shape[0])
    q_mean = q_text.to(dtype).mean(dim=1).reshape(k.shape[0], group, -1)  # [Hkv, H/Hkv, d]
    logits = q_mean @ k.to(dtype).transpose(1, 2)  # [Hkv, H/Hkv, N]
    return logits.reshape(q_text.shape[0], k.shape[1]) / math.sqrt(k.shape[-1])


def value_norms(v: Tensor) -> Tensor:
    """``‖v_i‖₂`` per KV head: ``v [Hkv, N, dv] -> [Hkv, N]`` (float32 or float64)."""
    return torch.linalg.vector_norm(v.to(_compute_dtype(v)), dim=-1)


def magnitude_terms(q_text: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The per-head parts of :func:`magnitude` (method.md §2), so that anyone can recompute it:
    ``P^h_i = exp(logit_hi − shift_h) · ‖v_i‖_h`` and ``P_i = mean_h P^h_i``.

    Args: as :func:`magnitude`.
    Returns:
        logits ``[H, N]`` (``q_T·k_i/√d``), value norms ``[H, N]`` (``‖v_i‖`` of the KV head each
        query head reads), shifts ``[H]`` (each head's maximum over the N tokens of
        ``logit + log‖v‖``; 0 where that is not finite).
    """
    _check_kv(k, v)
    logits = kernel_logits(q_text, k)  # [H, N]
    group = q_text.shape[0] // k.shape[0]
    norms = value_norms(v).to(logits.dtype).repeat_interleave(group, dim=0)  # [H, N]
    shift = (logits + torch.log(norms)).max(dim=1).values
    return logits, norms, torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))


def magnitude(q_text: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Information magnitude ``P_i = κ(q_T, k_i) · ‖v_i‖`` (method.md §2), mean over query heads.

    Per head the score is computed in log space, ``logit + log‖v‖``, and exponentiated after
    subtracting the head's maximum over the N tokens, so each head's values lie in (0, 1]
    (0 only for a zero value vector) and nothing overflows in any input dtype
    (:func:`magnitude_terms` gives the parts).

    Args:
        q_text: ``[H, T, d]`` pre-RoPE queries of the text tokens.
        k: ``[Hkv, N, d]`` pre-RoPE keys.
        v: ``[Hkv, N, dv]`` values.
    Returns:
        ``[N]`` float32 (float64 for float64 input).
    """
    logits, norms, shift = magnitude_terms(q_text, k, v)
    return torch.exp(logits + torch.log(norms) - shift[:, None]).mean(dim=0)


def update_log_norms(k: Tensor, v: Tensor) -> Tensor:
    """``log ‖ΔW_i‖_F = ½ k_i·k_i / √d + log ‖v_i‖`` per KV head (method.md §1: ‖ΔW_i‖_F =
    √κ(k_i, k_i) · ‖v_i‖), in log space so that nothing overflows.

    Args: k ``[Hkv, N, d]`` (post-RoPE), v ``[Hkv, N, dv]``. Returns ``[Hkv, N]`` (float64).
    """
    _check_kv(k, v)
    k, v = k.to(torch.float64), v.to(torch.float64)
    return 0.5 * (k * k).sum(-1) / math.sqrt(k.shape[-1]) + torch.log(v.norm(dim=-1))


# --- information duplication (method.md §3) ----------------------------------------------------


class DuplicationBlocks:
    """Blocks of the duplication matrix ``S̄²`` on demand, without forming the N × N matrix.

    ``S^h_ij = cos(v_i, v_j) · exp(−‖k_i − k_j‖² / (2√d))`` per KV head h (keys post-RoPE), and
    ``S̄²_ij = mean_h (S^h_ij)²``. Symmetric, ones on the diagonal (also for a zero value
    vector, whose cosine with others is defined as 0), values in [0, 1].

    Args:
        k: ``[Hkv, N, d]`` post-RoPE keys.
        v: ``[Hkv, N, dv]`` values.
    The blocks are computed on the device of ``k`` (:attr:`device`).
    """

    def __init__(self, k: Tensor, v: Tensor):
        _check_kv(k, v)
        dtype = _compute_dtype(k)
        k = k.to(dtype)
        # Distances do not change under a shift; centring the keys keeps ‖a‖² + ‖b‖² − 2a·b exact
        # enough in float32 when keys are large.
        self._k = k - k.mean(dim=1, keepdim=True)  # [Hkv, N, d]
        self._k_sq = (self._k * self._k).sum(-1)  # [Hkv, N]
        self._v_unit = torch.nn.functional.normalize(v.to(dtype), dim=-1)  # [Hkv, N, dv]
        self._scale = 2.0 * math.sqrt(k.shape[-1])
        self.n = k.shape[1]
        self.device = k.device

    def _indices(self, rows, cols) -> tuple[Tensor, Tensor, torch.device]:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return rows.to(self.device), torch.as_tensor(cols, dtype=torch.long).to(self.device), rows.device

    def _mean_sim_sq(self, rows: Tensor, cols: Tensor) -> Tensor:
        """``mean_h (S^h[rows][:, cols])²`` ``[R, C]``, before the clamp and the diagonal rule: the
        formula, once. Gathers the rows' keys and values (``d`` numbers each) and works in place,
        so the only ``[Hkv, R, C]`` buffers are the distances and the cosines."""
        k, k_cols = self._k[:, rows], self._k[:, cols]
        sq_dist = torch.baddbmm(self._k_sq[:, rows, None] + self._k_sq[:, None, cols], k, k_cols.transpose(1, 2),
                                alpha=-2.0)  # ‖k_i − k_j‖² [Hkv, R, C]
        kernel = sq_dist.clamp_min_(0.0).mul_(-2.0 / self._scale).exp_()  # exp(−2‖k_i − k_j‖² / (2√d)) = S² / cos²
        sim_sq = torch.bmm(self._v_unit[:, rows], self._v_unit[:, cols].transpose(1, 2)).square_().mul_(kernel)
        return sim_sq.mean(dim=0)

    def block(self, rows: Tensor, cols: Tensor) -> Tensor:
        """``S̄²[rows][:, cols]``: rows ``[R]``, cols ``[C]`` (index tensors) -> ``[R, C]``, computed on
        :attr:`device` and returned on the device of ``rows`` (CPU for lists)."""
        rows, cols, home = self._indices(rows, cols)
        dup = self._mean_sim_sq(rows, cols).clamp_(0.0, 1.0)
        dup[rows[:, None] == cols[None, :]] = 1.0
        return dup.to(home)

    def row_max(self, rows: Tensor, cols: Tensor, tile: int = 256) -> Tensor:
        """``max_{j ∈ cols} S̄²[i, j]`` for each ``i`` in rows: ``[R]``, equal to
        ``block(rows, cols).amax(1)`` (1 where ``i`` is in cols, 0 for no cols). What PC-MMR's
        penalty reads (method.md §4). Columns are taken ``tile`` at a time, so memory is
        O(Hkv · R · tile), never R × C (at 7 209 tokens and a chunk of 2 048 it is about 6 times
        faster than the whole block). Computed on :attr:`device`, returned on the device of ``rows``."""
        rows, cols, home = self._indices(rows, cols)
        best = torch.zeros(rows.numel(), dtype=self._k.dtype, device=self.device)
        for start in range(0, cols.numel(), tile):
            best = torch.maximum(best, self._mean_sim_sq(rows, cols[start:start + tile]).amax(dim=1))
        best = best.clamp_(0.0, 1.0)
        best[torch.isin(rows, cols)] = 1.0
        return best.to(home)

    def full(self) -> Tensor:
        """The whole ``[N, N]`` matrix, exactly symmetric (on :attr:`device`)."""
        every = torch.arange(self.n, device=self.device)
        dup = self.block(every, every)
        return 0.5 * (dup + dup.T)


def duplication(k: Tensor, v: Tensor) -> Tensor:
    """Information duplication ``S̄²`` (method.md §3): k ``[Hkv, N, d]`` post-RoPE, v ``[Hkv, N, dv]`` -> ``[N, N]``."""
    return DuplicationBlocks(k, v).full()


def token_duplication(duplication, top: int = 8, block: int = 512) -> Tensor:
    """Per-token duplication for heat-maps: mean of the ``top`` largest ``S̄²_ij``, j ≠ i (method.md §3).

    Args:
        duplication: the symmetric ``[N, N]`` matrix, or a :class:`DuplicationBlocks` (then only
            ``N × block`` entries exist at a time: memory O(N · block), never N × N).
        top: how many of the largest entries to average; block: columns per step.
    Returns:
        ``[N]`` float32 on the device of ``duplication``; zeros when N = 1.
    """
    if isinstance(duplication, Tensor):
        n, device, read = duplication.shape[0], duplication.device, (lambda rows, cols: duplication[rows][:, cols])
    else:
        n, device, read = duplication.n, duplication.device, duplication.block
    every = torch.arange(n, device=device)
    out = torch.zeros(n, device=device)
    if n < 2:
        return out
    for start in range(0, n, block):
        cols = every[start:start + block]
        part = read(every, cols).float()  # [N, C], a new tensor: column j is row j (symmetric)
        part[cols, torch.arange(cols.numel(), device=device)] = float("-inf")
        out[cols] = part.topk(min(top, n - 1), dim=0).values.mean(dim=0)
    return out


def keep_mask(keep: Tensor, n: int, device: torch.device | str | None = None) -> Tensor:
    """A kept set as a bool mask ``[n]``, from a bool mask ``[n]`` or an index tensor; on ``device``
    (default: the device ``keep`` is on, CPU for lists)."""
    keep = torch.as_tensor(keep)
    device = keep.device if device is None else device
    if keep.dtype == torch.bool:
        if keep.shape != (n,):
            raise ValueError(f"keep mask has shape {tuple(keep.shape)}, expected ({n},)")
        return keep.to(device)
    keep = keep.long().reshape(-1)
    if keep.numel() and (keep.min() < 0 or keep.max() >= n):
        raise ValueError(f"kept indices must lie in [0, {n}), got {keep.min().item()}..{keep.max().item()}")
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[keep.to(device)] = True
    return mask


def _shifted_kernel(k: Tensor) -> Tensor:
    """``κ(k_i, k_j) / max κ`` per head, float64: k ``[Hkv, N, d]`` -> ``[Hkv, N, N]``, entries in [0, 1].

    The shift (the largest key logit, ``max_i ‖k_i‖²/√d``) cancels in every ratio used here and
    keeps the exponential finite.
    """
    k = k.to(torch.float64)
    logits = k @ k.transpose(1, 2) / math.sqrt(k.shape[-1])
    return torch.exp(logits - logits.amax(dim=(1, 2), keepdim=True))


def _gram(k: Tensor, v: Tensor) -> Tensor:
    """Shifted Gram matrices ``G_ij = (v_i·v_j) · κ(k_i, k_j)`` per head, float64 (the greedy oracle's).

    Args: k ``[Hkv, N, d]``, v ``[Hkv, N, dv]``. Returns ``[Hkv, N, N]``; ``Σ G ∝ ‖W‖²_F``.
    """
    _check_kv(k, v)
    v = v.to(torch.float64)
    return (v @ v.transpose(1, 2)) * _shifted_kernel(k)


def _dropped_energy(gram: Tensor, kept: Tensor) -> Tensor:
    """``‖W − W_S‖²`` per head (shifted): ``Σ_{i,j ∉ S} G_ij``; gram ``[Hkv, N, N]``, kept ``[N]`` bool."""
    dropped = ~kept
    return gram[:, dropped][:, :, dropped].sum(dim=(1, 2)).clamp_min(0.0)


def _rank_of(sigma_sq: Tensor) -> tuple[Tensor, Tensor]:
    """Effective rank ``exp(entropy of σ²/Σσ²)`` and stable rank ``Σσ²/σ₁²`` of ``[Hkv, dv]`` σ² (0 for W = 0)."""
    tiny = torch.finfo(torch.float64).tiny
    energy = sigma_sq.sum(dim=-1)
    # divide by the energy itself, however small (a subnormal energy clamped up to `tiny` would
    # give shares below 1 for a single σ and an effective rank above the dimension)
    p = sigma_sq / torch.where(energy > 0, energy, torch.ones_like(energy))[:, None]
    entropy = -(p * torch.log(p.clamp_min(tiny))).sum(dim=-1)
    effective = torch.where(energy > 0, torch.exp(entropy), torch.zeros_like(entropy))
    largest = sigma_sq.amax(dim=-1)
    stable = torch.where(energy > 0, energy / torch.where(largest > 0, largest, torch.ones_like(largest)),
                         torch.zeros_like(energy))
    return effective, stable


@dataclass
class WeightMeasures:
    """Measures of one kept set's implicit weight, per KV head (float64; method.md §6).

    Attributes:
        weight_error: ``[Hkv]`` ``‖W − W_S‖_F / ‖W‖_F``, W summing every token's update.
        visual_weight_error: ``[Hkv]`` the same with W summing the candidates' (visual tokens') updates only.
        spectrum: ``[Hkv, dv]`` singular values of ``W_S`` relative to ``‖W‖_F``, descending.
        effective_rank, stable_rank: ``[Hkv]`` of ``W_S``; visual_effective_rank,
        visual_stable_rank: ``[Hkv]`` of the kept candidates' part ``W_{S∩V}``.
    """

    weight_error: Tensor
    visual_weight_error: Tensor
    spectrum: Tensor
    effective_rank: Tensor
    stable_rank: Tensor
    visual_effective_rank: Tensor
    visual_stable_rank: Tensor


class ImplicitWeight:
    """The implicit weight of one attention layer, for measuring any kept set exactly and fast.

    Tokens split into **candidates** C (those a kept set may drop, the visual tokens) and the rest
    T (always kept). Everything is float64 and uses the kernel trick (method.md §1, §6) with the
    kernel shifted by ``max_i ‖k_i‖²/√d`` per head (≥ every logit, so entries lie in (0, 1]; the
    shift cancels in every ratio). Built once (cost ``O(Hkv · N · Nc · (d + dv))``, blockwise, memory
    ``O(block · N)``), it keeps only ``O(Hkv · Nc · dv)`` numbers: ``KV = K_CC V_C``,
    ``U = K_CT V_T``, ``M_CC = V_Cᵀ K_CC V_C``, ``A_TT = V_Tᵀ K_TT V_T`` and the two totals. A kept set
    K ⊂ C (dropped D = C \ K) then costs ``O(min(|K|, |D|)² · (d + dv))``, because

        M_KK = V_Kᵀ K_KK V_K = M_CC − Σ_{j∈D} (KV_jᵀ v_j + v_jᵀ KV_j) + M_DD
        ‖W − W_S‖² = tr M_DD = tr M_CC − 2 Σ_{j∈K} v_j·KV_j + tr M_KK
        W_Sᵀ W_S = A_TT + C_K + C_Kᵀ + M_KK,   C_K = Σ_{j∈K} u_jᵀ v_j    (u_j: row j of U)

    and only the smaller of K and D needs its kernel block.

    Args:
        k: ``[Hkv, N, d]`` post-RoPE keys and v ``[Hkv, N, dv]`` values of every token of the sequence.
        candidates: ``[Nc]`` positions in 0..N−1 that kept sets choose from (index or bool mask).
        block: rows per kernel block (memory ``Hkv · block · N`` float64).
    Everything is computed and kept on the device of ``k`` (float64: not on Apple's MPS, which has
    none; move such tensors to the CPU first).
    """

    def __init__(self, k: Tensor, v: Tensor, candidates: Tensor, block: int = 1024):
        _check_kv(k, v)
        n = k.shape[1]
        is_candidate = keep_mask(candidates, n, k.device)
        self.block = block
        self.scale = 1.0 / math.sqrt(k.shape[-1])
        k64, v64 = k.to(torch.float64), v.to(torch.float64)
        self.shift = (k64 * k64).sum(-1).amax(dim=1) * self.scale  # [Hkv]
        self.kc, self.vc = k64[:, is_candidate], v64[:, is_candidate]  # [Hkv, Nc, d], [Hkv, Nc, dv]
        kt, vt = k64[:, ~is_candidate], v64[:, ~is_candidate]
        self.num_candidates = self.kc.shape[1]
        self.kv = self._kernel_times(self.kc, self.kc, self.vc)  # [Hkv, Nc, dv]
        self.u = self._kernel_times(self.kc, kt, vt)  # [Hkv, Nc, dv]
        self.m_cc = _symmetric(self.vc.transpose(1, 2) @ self.kv)  # [Hkv, dv, dv]
        self.a_tt = _symmetric(vt.transpose(1, 2) @ self._kernel_times(kt, kt, vt))
        self.total_visual = _trace(self.m_cc)
        self.total = _trace(self.a_tt) + 2.0 * (self.u * self.vc).sum(dim=(1, 2)) + self.total_visual

    def _kernel_times(self, rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
        """``K(rows, cols) @ values`` per head, the kernel made ``block`` rows at a time: ``[Hkv, R, dv]``."""
        out = torch.zeros(rows.shape[0], rows.shape[1], values.shape[-1], dtype=torch.float64, device=rows.device)
        for start in range(0, rows.shape[1], self.block):
            part = rows[:, start:start + self.block]
            kernel = torch.exp(part @ cols.transpose(1, 2) * self.scale - self.shift[:, None, None])
            out[:, start:start + self.block] = kernel @ values
        return out

    def _quadratic(self, index: Tensor) -> Tensor:
        """``V_Xᵀ K_XX V_X`` for the candidates ``index``: ``[Hkv, dv, dv]``."""
        keys, values = self.kc[:, index], self.vc[:, index]
        return _symmetric(values.transpose(1, 2) @ self._kernel_times(keys, keys, values))

    def measure(self, keep) -> WeightMeasures:
        """The measures of kept set K (bool mask ``[Nc]`` or indices into the candidates), on the
        device the weight was built on."""
        kept = keep_mask(keep, self.num_candidates, self.kc.device)
        inside, outside = torch.nonzero(kept).reshape(-1), torch.nonzero(~kept).reshape(-1)
        if inside.numel() <= outside.numel():
            m_kk = self._quadratic(inside)
            dropped = self.total_visual - 2.0 * (self.vc[:, inside] * self.kv[:, inside]).sum(dim=(1, 2)) + _trace(m_kk)
        else:
            m_dd = self._quadratic(outside)
            cross = self.kv[:, outside].transpose(1, 2) @ self.vc[:, outside]
            m_kk = _symmetric(self.m_cc - cross - cross.transpose(1, 2) + m_dd)
            dropped = _trace(m_dd)
        text_cross = self.u[:, inside].transpose(1, 2) @ self.vc[:, inside]
        m_s = _symmetric(self.a_tt + text_cross + text_cross.transpose(1, 2) + m_kk)
        tiny = torch.finfo(torch.float64).tiny
        dropped = dropped.clamp_min(0.0)
        sigma_sq = torch.linalg.eigvalsh(m_s).clamp_min(0.0).flip(-1)
        visual_sigma_sq = torch.linalg.eigvalsh(m_kk).clamp_min(0.0).flip(-1)
        effective, stable = _rank_of(sigma_sq)
        visual_effective, visual_stable = _rank_of(visual_sigma_sq)
        return WeightMeasures(
            weight_error=(dropped / self.total.clamp_min(tiny)).sqrt(),
            visual_weight_error=(dropped / self.total_visual.clamp_min(tiny)).sqrt(),
            spectrum=(sigma_sq / self.total.clamp_min(tiny)[:, None]).sqrt(),
            effective_rank=effective, stable_rank=stable,
            visual_effective_rank=visual_effective, visual_stable_rank=visual_stable)

    def update_share(self) -> Tensor:
        """``[Hkv, Nc]`` each candidate's share ``‖ΔW_i‖_F / ‖W‖_F`` of the whole implicit weight
        (method.md §1: ``‖ΔW_i‖²_F = κ(k_i, k_i) ‖v_i‖²``; O(Nc)). A share near 1 means one update
        dominates W (an attention sink); shares need not sum to 1 (updates are not orthogonal)."""
        own = torch.exp((self.kc * self.kc).sum(-1) * self.scale - self.shift[:, None]) * (self.vc * self.vc).sum(-1)
        return (own.clamp_min(0.0) / self.total.clamp_min(torch.finfo(torch.float64).tiny)[:, None]).sqrt()


def _symmetric(m: Tensor) -> Tensor:
    return 0.5 * (m + m.transpose(-1, -2))


def _trace(m: Tensor) -> Tensor:
    return m.diagonal(dim1=-2, dim2=-1).sum(-1)


def _whole(k: Tensor, v: Tensor, keep: Tensor) -> WeightMeasures:
    """Measures of a kept set when every token is a candidate (nothing always kept)."""
    return ImplicitWeight(k, v, torch.ones(k.shape[1], dtype=torch.bool)).measure(keep_mask(keep, k.shape[1], k.device))


def update_share(k: Tensor, v: Tensor) -> Tensor:
    """Each token's share ``‖ΔW_i‖_F / ‖W‖_F`` of the implicit weight, per KV head (method.md §1, §6).

    Args: k ``[Hkv, N, d]`` post-RoPE keys, v ``[Hkv, N, dv]`` values, of every token W sums.
    Returns: ``[Hkv, N]`` float64 ≥ 0 (see :meth:`ImplicitWeight.update_share`).
    """
    return ImplicitWeight(k, v, torch.ones(k.shape[1], dtype=torch.bool)).update_share()


def weight_error_per_head(k: Tensor, v: Tensor, keep: Tensor) -> Tensor:
    """Relative error ``‖W − W_S‖_F / ‖W‖_F`` of the implicit weight, per KV head.

    Args:
        k: ``[Hkv, N, d]`` post-RoPE keys of all tokens of the sequence.
        v: ``[Hkv, N, dv]`` values.
        keep: kept set S as bool mask ``[N]`` or index tensor.
    Returns:
        ``[Hkv]`` float64 ≥ 0: 0 when nothing is dropped, 1 when everything is. It can exceed 1
        when the kept updates cancel what the dropped ones add (the sum is not a projection).
    """
    return _whole(k, v, keep).weight_error


def weight_error(k: Tensor, v: Tensor, keep: Tensor) -> float:
    """Mean over KV heads of ``weight_error_per_head`` (method.md §6): a float ≥ 0."""
    return float(weight_error_per_head(k, v, keep).mean())


def weight_spectrum(k: Tensor, v: Tensor, keep: Tensor) -> Tensor:
    """Singular values of ``W_S`` per KV head, relative to ``‖W‖_F`` of the full set.

    ``W_Sᵀ W_S = V_Sᵀ K_SS V_S`` (dv × dv) with the kernel matrix ``K_SS``; its eigenvalues are σ².
    Dividing by ``‖W‖_F`` makes the values dimensionless and removes the kernel shift.

    Args: k ``[Hkv, N, d]``, v ``[Hkv, N, dv]``, keep mask ``[N]`` or indices.
    Returns: ``[Hkv, dv]`` float64, descending.
    """
    return _whole(k, v, keep).spectrum


def effective_rank(k: Tensor, v: Tensor, keep: Tensor) -> float:
    """Mean over heads of ``exp(entropy of σ²/Σσ²)`` of ``W_S``: 1 for rank one, dv at most."""
    return float(_whole(k, v, keep).effective_rank.mean())


def stable_rank(k: Tensor, v: Tensor, keep: Tensor) -> float:
    """Mean over heads of ``‖W_S‖²_F / σ₁²``."""
    return float(_whole(k, v, keep).stable_rank.mean())


def _visible_logits(q: Tensor, k: Tensor, query_positions: Tensor | None) -> tuple[Tensor, Tensor]:
    """Attention logits ``q·k / √d`` and which keys each query row sees.

    Args: q ``[H, R, d]``, k ``[Hkv, N, d]`` (GQA: head h reads KV head ``h // (H / Hkv)``),
        query_positions ``[R]`` in ``[0, N)`` or None (every row sees every key).
    Returns: logits ``[H, R, N]`` float64 and visible ``[R, N]`` bool (``j ≤ query_positions[r]``).
    """
    if q.dim() != 3 or k.dim() != 3 or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q must be [H, R, d] and k [Hkv, N, d], got {tuple(q.shape)}, {tuple(k.shape)}")
    group = _check_heads(q.shape[0], k.shape[0])
    rows, n = q.shape[1], k.shape[1]
    k64 = k.to(torch.float64).repeat_interleave(group, dim=0)
    logits = q.to(torch.float64) @ k64.transpose(1, 2) / math.sqrt(k.shape[-1])  # [H, R, N]
    if query_positions is None:
        return logits, torch.ones(rows, n, dtype=torch.bool, device=k.device)
    positions = torch.as_tensor(query_positions, dtype=torch.long).reshape(-1)
    if positions.numel() != rows or (rows and (int(positions.min()) < 0 or int(positions.max()) >= n)):
        raise ValueError(f"query_positions must hold {rows} positions in [0, {n}), got {positions.tolist()}")
    return logits, torch.arange(n, device=k.device)[None, :] <= positions.to(k.device)[:, None]


def _masked_logsumexp(logits: Tensor, mask: Tensor) -> Tensor:
    """``log Σ_{j: mask} exp(logits_j)`` over the last axis; −inf where the mask is empty."""
    return torch.logsumexp(logits.masked_fill(~mask, float("-inf")), dim=-1)


def attention_weights(q: Tensor, k: Tensor, query_positions: Tensor | None = None) -> Tensor:
    """Softmax attention weights ``a_rj = κ(q_r, k_j) / Σ_{i visible} κ(q_r, k_i)`` of the rows ``q``.

    Args: q ``[H, R, d]`` post-RoPE query rows, k ``[Hkv, N, d]`` post-RoPE keys (GQA: head h reads
        KV head ``h // (H / Hkv)``), query_positions ``[R]`` or None as in :func:`kept_attention_mass`
        (causal: row r sees keys ``j ≤ query_positions[r]``).
    Returns: ``[H, R, N]`` float64; each row sums to 1 over the keys it sees, 0 elsewhere.
    """
    logits, visible = _visible_logits(q, k, query_positions)
    log_norm = _masked_logsumexp(logits, visible)
    return torch.where(visible, torch.exp(logits - log_norm[..., None]), 0.0)


def attention_output_error(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor, query_positions: Tensor | None = None
) -> float:
    """``‖A(Q; K_S, V_S) − A(Q; K, V)‖_F / ‖A(Q; K, V)‖_F`` for softmax attention, all heads at once.

    Args:
        q: ``[H, T, d]`` post-RoPE queries (the text tokens).
        k: ``[Hkv, N, d]`` post-RoPE keys, v ``[Hkv, N, dv]`` values, of all tokens.
        keep: kept set S, bool mask ``[N]`` or indices.
        query_positions: optional ``[T]`` index of each query in the N tokens; when given, query t
            sees keys ``j ≤ query_positions[t]`` only (causal attention).
    Returns:
        float ≥ 0 (float64 computation). A query that sees no kept key gets a zero output; when the
        full output is exactly zero the absolute ``‖A_S − A‖`` is returned.
    """
    return float(attention_split(q, k, v, keep, query_positions).relative_error)


# --- kept attention mass and the normaliser (method.md §8, ours) --------------------------------


def kept_attention_mass(q: Tensor, k: Tensor, keep: Tensor, query_positions: Tensor | None = None) -> Tensor:
    """Share of each query row's attention that the kept set holds (method.md §8.2).

    ``m(q) = Σ_{j∈S} κ(q, k_j) / Σ_j κ(q, k_j) = η(q) / η_S(q)``, the sums over the keys the row
    sees. Computed as ``exp(logsumexp_S − logsumexp_all)`` in float64, so nothing overflows.

    Args:
        q: ``[H, R, d]`` post-RoPE query rows (as attention uses them).
        k: ``[Hkv, N, d]`` post-RoPE keys of all N tokens of the sequence.
        keep: kept set S (bool mask ``[N]`` or indices): every non-visual token plus the kept visual ones.
        query_positions: optional ``[R]`` sequence position of each row; row r then sees keys
            ``j ≤ query_positions[r]`` only (causal attention).
    Returns:
        ``[H, R]`` float64 in [0, 1]; exactly 1 where nothing the row sees is dropped. Mean over
        rows (``.mean(dim=1)``) for the per-head value.
    """
    kept = keep_mask(keep, k.shape[1], k.device)
    logits, visible = _visible_logits(q, k, query_positions)
    return torch.exp(_masked_logsumexp(logits, visible & kept) - _masked_logsumexp(logits, visible))


def _relative_norm(part: Tensor, whole: Tensor, dim=None) -> Tensor:
    """``‖part‖ / ‖whole‖``; where ``whole`` is exactly zero the ratio is undefined and the absolute
    ``‖part‖`` is returned instead (finite, and 0 when ``part`` is 0 too)."""
    scale = torch.linalg.vector_norm(whole, dim=dim)
    return torch.linalg.vector_norm(part, dim=dim) / torch.where(scale > 0, scale, torch.ones_like(scale))


@dataclass
class AttentionSplit:
    """``A(q; K, V) − A(q; K_S, V_S) = dropped_part + normaliser_part``, exactly (method.md §8.3).

    Attributes (H query heads, R query rows, dv value dim; float64):
        full: ``[H, R, dv]`` ``A(q; K, V) = η(q) Σ_j κ(q, k_j) v_j``.
        pruned: ``[H, R, dv]`` ``A(q; K_S, V_S) = η_S(q) Σ_{j∈S} κ(q, k_j) v_j`` (zero for a row that
            sees no kept key).
        dropped_part: ``[H, R, dv]`` ``η(q) Σ_{j∉S} κ(q, k_j) v_j = η(q) φ(q) (W − W_S)``: what the
            dropped updates contributed, under the full normaliser.
        normaliser_part: ``[H, R, dv]`` ``(η(q) − η_S(q)) Σ_{j∈S} κ(q, k_j) v_j = −(1 − m) A(q; K_S, V_S)``:
            the kept tokens' output renormalised.
        kept_mass: ``[H, R]`` m(q), as :func:`kept_attention_mass`.
    """

    full: Tensor
    pruned: Tensor
    dropped_part: Tensor
    normaliser_part: Tensor
    kept_mass: Tensor

    def _relative(self, part: Tensor) -> Tensor:
        return _relative_norm(part, self.full, dim=(1, 2))

    @property
    def relative_error(self) -> Tensor:
        """Scalar ``‖A − A_S‖_F / ‖A‖_F`` over every head, row and value dim (:func:`attention_output_error`)."""
        return _relative_norm(self.pruned - self.full, self.full)

    @property
    def output_error(self) -> Tensor:
        """``[H]`` ``‖A − A_S‖_F / ‖A‖_F`` per query head (over rows and value dims)."""
        return self._relative(self.full - self.pruned)

    @property
    def dropped_error(self) -> Tensor:
        """``[H]`` ``‖dropped_part‖_F / ‖A‖_F`` per query head."""
        return self._relative(self.dropped_part)

    @property
    def normaliser_error(self) -> Tensor:
        """``[H]`` ``‖normaliser_part‖_F / ‖A‖_F`` per query head."""
        return self._relative(self.normaliser_part)

    @property
    def kept_mass_per_head(self) -> Tensor:
        """``[H]`` kept mass, mean over the query rows."""
        return self.kept_mass.mean(dim=1)


def attention_split(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor, query_positions: Tensor | None = None
) -> AttentionSplit:
    """The attention-output change of pruning, split into the dropped updates and the normaliser.

    With the full attention weights ``a_j = κ(q, k_j) / Σ_i κ(q, k_i)`` (method.md §8.3):
    ``A − A_S = Σ_{j∉S} a_j v_j − (1 − m) A_S``, where ``m = Σ_{j∈S} a_j`` is the kept mass. Logits
    are shifted by log-sum-exp over each mask before exponentiating and everything is float64;
    ``1 − m`` is computed from the dropped keys' own log-sum-exp, so it stays accurate near m = 1.

    Args:
        q: ``[H, R, d]`` post-RoPE query rows.
        k: ``[Hkv, N, d]`` post-RoPE keys, v ``[Hkv, N, dv]`` values, of all N tokens (GQA: query
            head h reads KV head ``h // (H / Hkv)``).
        keep: kept set S, bool mask ``[N]`` or indices (every non-visual token plus the kept visual ones).
        query_positions: optional ``[R]`` sequence positions of the rows (causal: row r sees
            ``j ≤ query_positions[r]``), as in :func:`attention_output_error`.
    Returns:
        :class:`AttentionSplit`; its ``output_error`` per head is consistent with
        :func:`attention_output_error` (same rows, same S).
    """
    _check_kv(k, v)
    kept = keep_mask(keep, k.shape[1], k.device)
    logits, visible = _visible_logits(q, k, query_positions)
    v64 = v.to(torch.float64).repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    on_kept, on_dropped = visible & kept[None, :], visible & ~kept[None, :]
    log_all, log_kept = _masked_logsumexp(logits, visible), _masked_logsumexp(logits, on_kept)
    log_dropped = _masked_logsumexp(logits, on_dropped)

    def weights(mask: Tensor, log_norm: Tensor) -> Tensor:  # exp(logit − log Σ) on the mask, else 0
        return torch.where(mask, torch.exp(logits - log_norm[..., None]), 0.0)

    full_weights = weights(visible, log_all)
    pruned = weights(on_kept, log_kept) @ v64
    dropped_mass = torch.exp(log_dropped - log_all)  # [H, R], 1 − m
    return AttentionSplit(
        full=full_weights @ v64,
        pruned=pruned,
        dropped_part=torch.where(on_dropped, full_weights, 0.0) @ v64,
        normaliser_part=-dropped_mass[..., None] * pruned,
        kept_mass=torch.exp(log_kept - log_all),
    )


def greedy_oracle(
    k: Tensor, v: Tensor, budget: int, candidates: Tensor | None = None, always: Tensor | None = None
) -> Tensor:
    """Greedy forward selection minimising ``weight_error`` directly, one token at a time.

    Starting from ``S = always``, repeatedly adds the candidate whose addition gives the lowest
    mean-over-heads relative error ``‖W − W_S‖_F / ‖W‖_F`` (ties: lower index). Removing token c
    from the dropped set D changes ``Σ_{i,j∈D} G_ij`` by ``−2 Σ_{j∈D} G_cj + G_cc``, so each step
    costs O(Hkv · N).

    Args:
        k: ``[Hkv, N, d]`` post-RoPE keys, v ``[Hkv, N, dv]`` values, of all tokens.
        budget: number of candidates to choose (int, at most the number of candidates).
        candidates: indices that may be chosen (default: every token not in ``always``).
        always: indices kept regardless (e.g. the text tokens).
    Returns:
        ``[budget]`` LongTensor of chosen indices, in the order chosen.
    """
    n = k.shape[1]
    in_always = keep_mask(always if always is not None else torch.zeros(0, dtype=torch.long), n, k.device)
    is_candidate = keep_mask(candidates, n, k.device) & ~in_always if candidates is not None else ~in_always
    if not 0 <= budget <= int(is_candidate.sum()):
        raise ValueError(f"budget {budget} must lie between 0 and the {int(is_candidate.sum())} candidates")
    gram = _gram(k, v)  # [Hkv, N, N]
    total = gram.sum(dim=(1, 2)).clamp_min(torch.finfo(torch.float64).tiny)
    dropped = ~in_always
    energy = _dropped_energy(gram, in_always)  # [Hkv]
    row_sums = gram[:, :, dropped].sum(dim=2)  # [Hkv, N]: Σ_{j∈D} G_cj
    diagonal = gram.diagonal(dim1=1, dim2=2)  # [Hkv, N]
    chosen = []
    for _ in range(budget):
        new_energy = (energy[:, None] - 2.0 * row_sums + diagonal).clamp_min(0.0)  # [Hkv, N]
        error = (new_energy / total[:, None]).sqrt().mean(dim=0)  # [N]
        error[~is_candidate] = float("inf")
        best = int(torch.argmin(error))  # first minimum: lower index wins ties
        chosen.append(best)
        energy = new_energy[:, best]
        row_sums -= gram[:, :, best]
        is_candidate[best] = False
    return torch.tensor(chosen, dtype=torch.long)
