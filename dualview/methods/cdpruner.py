"""CDPruner: greedy MAP of a conditional DPP on the visual tokens' input embeddings.

Prunes before the language model (layer 0). Kernel ``diag(r)·S·diag(r)``, S the cosine
similarity of the visual tokens' language-model input embeddings, r their relevance to the
instruction.

Relevance differs from the original: CDPruner compares CLIP vision features with the
instruction encoded by CLIP's text tower; these VLMs have no text tower, so here relevance is
the cosine similarity between each visual token's input embedding and each instruction
token's input embedding (the language model's own embedding table), averaged over instruction
tokens and min-max normalised to [0, 1] over the visual tokens.
"""


from dualview.methods.registry import register


def relevance(inputs):
    """``[Nv]`` instruction relevance in [0, 1] (see the module docstring)."""
    import torch

    visual = torch.nn.functional.normalize(inputs.input_embeddings.double(), dim=-1)
    text = torch.nn.functional.normalize(inputs.prompt_embeddings.double(), dim=-1)
    score = (visual @ text.T).mean(dim=1)
    spread = (score.max() - score.min()).clamp_min(1e-12)
    return (score - score.min()) / spread


@register("cdpruner", layer=0, needs=("embeddings",))
def select(inputs, count: int):
    """Conditional DPP (relevance x similarity) on input embeddings, pruning before the LM."""
    from dualview.selection import dpp_map

    return dpp_map(inputs.input_embeddings, relevance(inputs), count)
