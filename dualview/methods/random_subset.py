"""Random: a uniformly random kept set, reproducible from ``seed``; prunes at the analysis layer."""

from dualview.methods.registry import register
from dualview.selection import random_subset


@register("random")
def select(analysis, count: int, seed: int = 0):
    """Seeded uniform random tokens, pruning at the analysis layer."""
    return random_subset(analysis.num_visual, count, seed)
