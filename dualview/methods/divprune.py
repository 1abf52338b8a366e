"""DivPrune: greedy max-min diversity of the visual tokens' language-model input embeddings.

Prunes before the language model (layer 0), after the projector. Repeatedly keeps the token
whose minimum cosine distance to the kept set is largest; text-agnostic.
"""

from dualview.methods.registry import register
from dualview.selection import max_min_diversity


@register("divprune", layer=0)
def select(analysis, count: int):
    """Max-min cosine diversity of input embeddings, pruning before the language model."""
    return max_min_diversity(analysis.input_embeddings, count)
