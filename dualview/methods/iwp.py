"""IWP (the default): information magnitude + PC-MMR on information duplication.

Prunes inside the language model at the analysis layer l (method.md §5). Scores: magnitude
``P_i = κ(q_T, k_i)·‖v_i‖`` from the layer's pre-RoPE q/k (§2), duplication S̄² from post-RoPE
keys and values (§3), selected by Progressive Chunked MMR (§4, Algorithm 1).
"""

from dualview.methods.registry import register
from dualview.selection import pc_mmr


@register("iwp")
def select(analysis, count: int, b0: int = 2, growth: int = 2, lam: float = 5.0):
    """Magnitude + PC-MMR (the paper's method), pruning at the analysis layer."""
    return pc_mmr(analysis.magnitude, analysis.duplication_blocks, count, b0=b0, growth=growth, lam=lam)
