"""The one exception type whose message is meant for the user (CLI and app print it as is)."""


class DualviewError(Exception):
    """A user-facing failure: the message is one sentence saying what was asked, why it failed,
    and what to do."""
