"""Errors a user can fix; the CLI prints their message on one line and exits with code 2."""


class UserError(ValueError):
    """Bad input: a missing or corrupt file, an unknown name, a value out of range.

    A ``ValueError``, so that library callers who catch ``ValueError`` for bad
    arguments catch these too; the command line tells them apart from other
    ``ValueError``s, which are bugs (exit 1 with a traceback).
    """
