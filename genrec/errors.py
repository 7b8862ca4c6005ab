"""User-facing errors.

Anything a user can cause (a missing file, a malformed line, a config key that does
not exist) is raised as :class:`GenrecError` with one line that names the problem and
the fix. The CLI prints that line and exits non-zero instead of a stack trace.
"""

from __future__ import annotations


class GenrecError(Exception):
    """An error caused by input or configuration, with a message fit for the user.

    Args:
        problem: what is wrong, naming the file/key/value involved.
        fix: what the user should do about it.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} -- {fix}")
