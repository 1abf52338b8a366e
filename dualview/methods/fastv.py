"""FastV: keep the visual tokens that receive the most attention at layer K − 1 (K = 2).

Prunes inside the language model from layer K on (layers 0..K−1 see every token). Score: the
softmax attention each visual token receives at layer K − 1, computed from that layer's q·k
(post-RoPE, causal), averaged over heads and over all query rows (method.md §7). For models
with fewer than 3 decoder layers K is L − 1.
"""

from dualview.methods.registry import register


def fastv_layer(inputs) -> int:
    """K: one past the layer whose attention was scored."""
    return inputs.fastv_layer + 1


@register("fastv", layer=fastv_layer, needs=("fastv_attention",))
def select(inputs, count: int):
    """Top-k of attention received at layer K − 1, pruning from layer K = 2."""
    from dualview.selection import top_k

    return top_k(inputs.attention_received, count)
