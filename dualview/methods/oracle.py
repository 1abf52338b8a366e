"""Oracle: greedy forward selection on the true implicit-weight error (slow; for teaching).

Prunes at the analysis layer l. Adds, one token at a time, the visual token that most lowers
``‖W − W_S‖_F / ‖W‖_F`` (method.md §6), with all text tokens always kept. It shows how close
a cheap selector gets to the objective it approximates; cost grows with the sequence length².
"""


from dualview.methods.registry import register


@register("oracle")
def select(inputs, count: int):
    """Greedy minimisation of the weight error, pruning at the analysis layer."""
    import torch
    from dualview import dual_form
    from dualview.selection import Selection

    keys, values, visual = inputs.sequence_kv
    length = keys.shape[1]
    others = torch.ones(length, dtype=torch.bool)
    others[visual] = False
    chosen = dual_form.greedy_oracle(keys, values, count, candidates=visual, always=torch.nonzero(others).reshape(-1))
    to_visual = torch.full((length,), -1, dtype=torch.long)
    to_visual[visual] = torch.arange(visual.numel())
    kept = to_visual[chosen]
    return Selection(kept=kept, chunks=[kept])
