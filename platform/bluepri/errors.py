"""The one error type users see: a message that fits on one line and says what to do.

Stages raise `BluepriError` for bad input (unknown model ref, bad config, unusable path);
the CLI prints its message without a traceback and exits non-zero. Anything else is a bug
and keeps its traceback.
"""


class BluepriError(Exception):
    """A user-facing error; `str(err)` is the whole one-line message."""
