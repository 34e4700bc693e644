"""The one error type users see: a message that fits on one line and says what to do.

Stages raise `BluepriError` for bad input (unknown model ref, bad config, unusable path);
the CLI prints its message without a traceback and exits non-zero. Anything else is a bug
and keeps its traceback.
"""


class BluepriError(Exception):
    """A user-facing error; `str(err)` is the whole one-line message."""


def first_line(err: BaseException) -> str:
    """An error's first line (its type's name when it has no message)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def error_line(err: BaseException) -> str:
    """One line for any error: ours as they are; others as their type and last line (Ray
    wraps a remote error in its whole traceback, whose last line names the cause)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, BluepriError):
        return lines[0] if lines else "error"
    last = lines[-1] if lines else ""
    return f"{type(err).__name__}: {last}"[:500] if last else type(err).__name__
