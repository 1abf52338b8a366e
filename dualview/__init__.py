"""dualview: look inside visual-token pruning of vision-language models.

The math lives in :mod:`dualview.dual_form` (scores, errors) and :mod:`dualview.selection`
(PC-MMR and the baselines' selection rules); both are pure tensor code.
"""

__version__ = "0.1.0"


from dualview.engine import load  # noqa: E402  (lazy: torch loads on first call)

__all__ = ["load", "__version__"]
