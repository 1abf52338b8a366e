"""The one exception type whose message is meant for the user (CLI and app print it as is).

A leaf module: it imports nothing from dualview, so every layer may raise it.
"""


class DualviewError(ValueError):
    """A user-facing failure: the message is one sentence saying what was asked, why it failed,
    and what to do. A ValueError, so pure functions may raise it for a bad argument value."""
