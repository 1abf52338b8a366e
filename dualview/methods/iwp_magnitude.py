"""IWP without duplication: the top tokens by information magnitude (the paper's ablation).

Prunes at the analysis layer l; scores ``P_i = κ(q_T, k_i)·‖v_i‖`` (method.md §2); no
redundancy penalty, so similar tokens can all be kept.
"""

from dualview.methods.registry import QUERY, register


@register("iwp-magnitude", params=(QUERY,))
def select(inputs, count: int, query: str):
    """Top-k of the information magnitude, pruning at the analysis layer."""
    from dualview.selection import top_k

    return top_k(inputs.magnitude_for(query), count)
