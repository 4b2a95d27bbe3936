"""Errors a user can fix; the CLI prints their message on one line and exits with code 2."""


class UserError(ValueError):
    """Bad input: a missing or corrupt file, an unknown name, a value out of range.

    A ``ValueError`` too, so that library callers who catch bad arguments as
    ``ValueError`` catch these as well; the CLI treats only this class as the
    user's mistake, every other exception as a bug.
    """
