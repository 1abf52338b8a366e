"""Classic MMR (Carbonell & Goldstein 1998): one token at a time, relevance vs. redundancy.

Prunes at the analysis layer l. Relevance is the information magnitude (method.md §2), the
redundancy the duplication S̄² against everything kept so far; each step takes
``argmax trade·P_i − (1 − trade)·max_{j∈C} S̄²_ij``.
"""

from dualview.methods.registry import QUERY, Param, register


@register("mmr", params=(Param("trade", 0.5, 0.0, 1.0, "weight of relevance against duplication", "λ'"), QUERY))
def select(inputs, count: int, trade: float, query: str):
    """Classic one-at-a-time MMR on magnitude and duplication, pruning at the analysis layer."""
    from dualview.selection import mmr

    return mmr(inputs.magnitude_for(query), inputs.duplication_blocks, count, trade=trade)
