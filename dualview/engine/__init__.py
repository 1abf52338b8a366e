"""The pruning engine: load a VLM, analyse a prompt at the pruning layer, answer with pruned tokens.

Importing this package is light; torch and transformers load on first use of :func:`load`.
"""

__all__ = ["load"]


def load(name_or_path: str = "builtin", device: str | None = None, dtype=None):
    """Load a supported VLM (``"builtin"``, a directory, or a Hugging Face id on disk) as a
    :class:`dualview.engine.session.Session`; see :func:`dualview.engine.loading.load`.
    Raises :class:`dualview.errors.DualviewError` with a one-sentence message."""
    from dualview.engine.loading import load as _load

    return _load(name_or_path, device=device, dtype=dtype)
