"""FastV: keep the visual tokens that receive the most attention at layer K − 1 (K = 2).

Prunes inside the language model from layer K on (layers 0..K−1 see every token). Score: the
softmax attention each visual token receives at layer K − 1, computed from that layer's q·k
(post-RoPE, causal), averaged over heads and over all query rows (method.md §7). For models
with fewer than 3 decoder layers K is L − 1.
"""

from dualview.methods.registry import register
from dualview.selection import top_k


def fastv_layer(analysis) -> int:
    """K: one past the layer whose attention was scored."""
    return analysis.fastv_layer + 1


@register("fastv", layer=fastv_layer)
def select(analysis, count: int):
    """Top-k of attention received at layer K − 1, pruning from layer K = 2."""
    return top_k(analysis.attention_received, count)
