"""IWP (the default): information magnitude + PC-MMR on information duplication.

Prunes inside the language model at the analysis layer l (method.md §5). Scores: magnitude
``P_i = κ(q_T, k_i)·‖v_i‖`` from the layer's pre-RoPE q/k (§2), duplication S̄² from post-RoPE
keys and values (§3), selected by Progressive Chunked MMR (§4, Algorithm 1).
"""

from dualview.methods.registry import QUERY, Param, register


PARAMS = (
    Param("b0", 2, 1, 4096, "size of PC-MMR's first chunk", "b₀"),
    Param("growth", 2, 1, 16, "factor by which each chunk grows", "g"),
    Param("lam", 5.0, 0.0, 100.0, "duplication penalty per round", "λ"),
    QUERY,
)
"""The paper's defaults (Algorithm 1 and §4.3: b₀ = 2, g = 2, λ = 5; q_T from the text rows); method.md §4, §8.1."""


@register("iwp", params=PARAMS)
def select(inputs, count: int, b0: int, growth: int, lam: float, query: str):
    """Magnitude + PC-MMR (the paper's method), pruning at the analysis layer."""
    from dualview.selection import pc_mmr

    return pc_mmr(inputs.magnitude_for(query), inputs.duplication_blocks, count, b0=b0, growth=growth, lam=lam)
