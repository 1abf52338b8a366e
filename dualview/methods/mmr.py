"""Classic MMR (Carbonell & Goldstein 1998): one token at a time, relevance vs. redundancy.

Prunes at the analysis layer l. Relevance is the information magnitude (method.md §2), the
redundancy the duplication S̄² against everything kept so far; each step takes
``argmax trade·P_i − (1 − trade)·max_{j∈C} S̄²_ij``.
"""

from dualview.methods.registry import register
from dualview.selection import mmr


@register("mmr")
def select(analysis, count: int, trade: float = 0.5):
    """Classic one-at-a-time MMR on magnitude and duplication, pruning at the analysis layer."""
    return mmr(analysis.magnitude, analysis.duplication_blocks, count, trade=trade)
