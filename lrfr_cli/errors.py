"""User-facing errors.

Library layers raise :class:`LrfrError` (or a subclass) for anything a user can fix: bad paths,
bad options, bad data. The CLI turns it into one red line and a non-zero exit; every other
exception is a bug and only shows its traceback under ``--debug``.
"""

from __future__ import annotations


class LrfrError(Exception):
    """An error caused by the user's input; the message says what to do next."""

    exit_code: int = 2


class LockedError(LrfrError):
    """Another process is writing the same artifact."""

    exit_code = 3


class OptionsChangedError(LrfrError):
    """An artifact exists but was made from other inputs or options."""
