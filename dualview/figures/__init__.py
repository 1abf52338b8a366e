"""Plotly figures built from plain results (numbers per token, token layouts, curves).

No model code here: the app, the CLI and the notebooks hand in lists / arrays / tensors.
"""

from dualview.figures.curves import METRICS, error_curves
from dualview.figures.export import animation_html
from dualview.figures.maps import (CHUNK_COLOR, STEP_JS, compare_kept, display_image, kept_map, outlined_tokens, panels, round_colors,
                                   selection_animation, token_map)
from dualview.figures.space import project_2d, token_space

__all__ = [
    "CHUNK_COLOR", "STEP_JS", "METRICS", "error_curves", "animation_html", "compare_kept", "display_image", "kept_map", "outlined_tokens",
    "panels", "round_colors",
    "selection_animation", "token_map", "project_2d", "token_space",
]
