"""The pruning engine: load a VLM, analyse a prompt at the pruning layer, answer with pruned tokens.

Importing this package is light; torch and transformers load on first use of :func:`load`.
"""

from dualview.engine.errors import DualviewError

__all__ = ["DualviewError", "load"]


from dualview import load  # noqa: E402  (lazy: torch loads on first call)
