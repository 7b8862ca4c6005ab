"""User-facing errors, in three kinds that every front end maps the same way.

Anything a user can cause (a missing file, a malformed line, a config key that does
not exist) is raised as :class:`InputError` with one line that names the problem and
the fix. The CLI prints that line and exits 2 instead of a stack trace; the server
answers 400. :class:`NotReadyError` means "try again later" (the server answers 503);
:class:`InternalError` is a fault of genrec itself (500, logged once).
"""

from __future__ import annotations


class GenrecError(Exception):
    """Base of genrec's errors: a message fit for the user.

    Args:
        problem: what is wrong, naming the file/key/value involved.
        fix: what the user should do about it.
    """

    #: HTTP status a server answers with for this kind of error.
    http_status = 400

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} -- {fix}")


class InputError(GenrecError, ValueError):
    """Bad input or configuration: the caller can fix it (HTTP 400, CLI exit 2)."""

    http_status = 400


class NotReadyError(GenrecError):
    """A component is not ready yet (an engine still starting) or no longer (it died): HTTP 503."""

    http_status = 503


class InternalError(GenrecError):
    """A fault inside genrec that the caller cannot fix: HTTP 500."""

    http_status = 500
