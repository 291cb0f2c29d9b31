"""The one exception type for user mistakes.

Anything a user can get wrong (a recipe value, a missing dataset folder, a corrupt checkpoint,
a malformed zoo table) raises :class:`RobustscaleError` with a single-line message naming the
bad value and what is allowed. The CLI prints that line and exits non-zero without a
traceback; programming errors stay ordinary exceptions with tracebacks.
"""


class RobustscaleError(Exception):
    """A user-facing error whose message is one line: what was wrong and what is allowed."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
