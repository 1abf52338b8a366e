"""Grid: uniform spatial subsampling, ignoring content; prunes at the analysis layer.

Each raster grid of the image (one for fixed and Qwen grids; the base view and the joint crop
grid for AnyRes) gets a share of the budget proportional to its size (largest remainders get
the leftover tokens), spread evenly over that grid.
"""


from dualview.methods.registry import register


@register("grid", needs=(), nested=False)
def select(inputs, count: int):
    """Evenly spread tokens over each image grid, pruning at the analysis layer."""
    import torch
    from dualview.selection import Selection, uniform_grid

    geometry = inputs.geometry
    members = [geometry.view_indices(v) for v in range(len(geometry.views))]
    exact = [count * m.numel() / geometry.num_visual for m in members]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda v: (-(exact[v] - shares[v]), v))
    for v in by_remainder[: count - sum(shares)]:
        shares[v] += 1
    chunks = []
    for (name, (rows, cols)), indices, share in zip(geometry.views, members, shares):
        if share:
            chunks.append(indices[uniform_grid(rows, cols, share).kept])
    kept = torch.cat(chunks)
    return Selection(kept=kept, chunks=[kept])
