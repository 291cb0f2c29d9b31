"""The one exception type for user mistakes.

Anything a user can get wrong (a recipe value, a missing dataset folder, a corrupt checkpoint,
a malformed zoo table) raises :class:`RobustscaleError` with a single-line message naming the
bad value and what is allowed. The CLI prints that line and exits non-zero without a
traceback; programming errors stay ordinary exceptions with tracebacks.
"""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for
    turning a library's multi-line error into the one line a RobustscaleError carries."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class RobustscaleError(Exception):
    """A user-facing error whose message is one line: what was wrong and what is allowed."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
