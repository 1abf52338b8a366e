"""Random: a uniformly random kept set, reproducible from ``seed``; prunes at the analysis layer."""

from dualview.methods.registry import Param, register


@register("random", params=(Param("seed", 0, 0, 2**31 - 1, "seed of the random draw"),), needs=())
def select(inputs, count: int, seed: int):
    """Seeded uniform random tokens, pruning at the analysis layer."""
    from dualview.selection import random_subset

    return random_subset(inputs.num_visual, count, seed)
