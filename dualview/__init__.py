"""dualview: look inside visual-token pruning of vision-language models.

The math lives in :mod:`dualview.dual_form` (scores, errors) and :mod:`dualview.selection`
(PC-MMR and the baselines' selection rules); both are pure tensor code.
"""

__version__ = "0.1.0"


def load(name_or_path: str = "builtin", device: str | None = None, dtype=None):
    """Load a supported VLM (``"builtin"``, a directory, or a Hugging Face id) as a
    :class:`dualview.engine.session.Session`; see :func:`dualview.engine.loading.load`.
    Raises :class:`dualview.engine.errors.DualviewError` with a one-sentence message."""
    from dualview.engine.loading import load as _load

    return _load(name_or_path, device=device, dtype=dtype)
