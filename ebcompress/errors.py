"""The one exception type for a user's mistake.

Anything a user can get wrong (a recipe field, a path, a ratio, a tampered file) raises
:class:`UserError` with a one-line message that names the field, path or value and says how
to fix it. The CLI prints that line and exits with status 2; it never shows a traceback for
one. Programming errors stay ordinary exceptions so they keep their tracebacks.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input, reported as one line (CLI exit code 2)."""

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message would read like a traceback in a terminal.
        super().__init__(" ".join(str(message).split()))
