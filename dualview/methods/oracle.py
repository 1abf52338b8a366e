"""Oracle: greedy forward selection on the true implicit-weight error (slow; for teaching).

Prunes at the analysis layer l. Adds, one token at a time, the visual token that most lowers
``‖W − W_S‖_F / ‖W‖_F`` (method.md §6), with all text tokens always kept. It shows how close
a cheap selector gets to the objective it approximates; cost grows with the sequence length².
"""

import torch

from dualview import dual_form
from dualview.methods.registry import register
from dualview.selection import Selection


@register("oracle")
def select(analysis, count: int):
    """Greedy minimisation of the weight error, pruning at the analysis layer."""
    prepared = analysis.prepared
    others = torch.ones(prepared.length, dtype=torch.bool)
    others[prepared.visual_positions] = False
    chosen = dual_form.greedy_oracle(analysis.projections.k_post, analysis.projections.v, count,
                                     candidates=prepared.visual_positions,
                                     always=torch.nonzero(others).reshape(-1))
    to_visual = torch.full((prepared.length,), -1, dtype=torch.long)
    to_visual[prepared.visual_positions] = torch.arange(prepared.visual_positions.numel())
    kept = to_visual[chosen]
    return Selection(kept=kept, chunks=[kept])
