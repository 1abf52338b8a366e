"""The models the app serves, loaded once and shared by every visitor.

:class:`ModelHolder` loads each model once; every call into a model goes through its lock
(pruning hooks are installed on the shared modules, so two generations must not overlap).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from dualview.errors import DualviewError


class ModelHolder:
    """Loaded models by name, loaded once and shared; ``lock`` serialises calls into a model.

    At most ``capacity`` models stay loaded (least recently used first out), so visitors naming
    model after model cannot fill the server's memory. With ``allowed`` (names) any other name is
    refused before anything is looked up.
    """

    def __init__(self, device: str | None = None, capacity: int = 2, allowed=None):
        self.device = device
        self.capacity = capacity
        self.allowed = None if allowed is None else tuple(allowed)
        self.lock = threading.Lock()
        self._sessions: OrderedDict = OrderedDict()

    def get(self, name: str):
        """The session for ``name``, loading it on first use (DualviewError when it cannot load)."""
        import dualview

        name = (name or "").strip() or "builtin"
        if self.allowed is not None and name not in self.allowed:
            # the same sentence whatever the name is, so the box cannot probe the server's files
            raise DualviewError(f"This server offers the models {', '.join(self.allowed)}; choose one of them.")
        with self.lock:
            if name not in self._sessions:
                try:
                    self._sessions[name] = dualview.load(name, device=self.device)
                except DualviewError:
                    raise
                except MemoryError:
                    raise DualviewError(f"Model '{name}' does not fit in memory; the previous model stays loaded.") from None
                except Exception as error:  # noqa: BLE001 - a model that cannot load must not take the app down
                    raise DualviewError(f"Model '{name}' could not be loaded ({type(error).__name__}); "
                                        "the previous model stays loaded.") from None
                while len(self._sessions) > self.capacity:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(name)
            return self._sessions[name]
