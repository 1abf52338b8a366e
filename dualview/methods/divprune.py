"""DivPrune: greedy max-min diversity of the visual tokens' language-model input embeddings.

Prunes before the language model (layer 0), after the projector. Repeatedly keeps the token
whose minimum cosine distance to the kept set is largest; text-agnostic.
"""

from dualview.methods.registry import register


@register("divprune", layer=0, needs=("embeddings",))
def select(inputs, count: int):
    """Max-min cosine diversity of input embeddings, pruning before the language model."""
    from dualview.selection import max_min_diversity

    return max_min_diversity(inputs.input_embeddings, count)
