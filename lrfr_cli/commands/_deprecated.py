"""Old option spellings that keep working for one release (0.2), with a note on stderr.

lrfr gave some short flags and long names a second meaning in some commands (``-m`` was
``--model`` in eval but ``--method`` in degrade; ``--margin`` meant pixels in align). Each now
has one meaning; the old spelling is a hidden option of its command that :func:`prefer` maps to
the new one, so scripts keep running and say what to change.
"""

from __future__ import annotations

from typing import Any, TypeVar

import typer

from ..errors import LrfrError

T = TypeVar("T")
REMOVED_IN = "0.3"


def prefer(command: str, new: T, old: T | None, *, new_flag: str, old_flag: str, default: Any = None, why: str = "") -> T:
    """``new`` unless only the old spelling was given: then its value, and a note on stderr.

    The old spelling next to a new one that is not at its default is an error (they are one
    option); next to the default, the old spelling's value is taken."""
    if old is None:
        return new
    if new != default:
        raise LrfrError(f"{old_flag} and {new_flag} are one option of lrfr {command}; give {new_flag} only")
    reason = f" ({why})" if why else ""
    typer.echo(f"lrfr {command}: {old_flag} is deprecated{reason}; use {new_flag}. "
               f"The old spelling goes in lrfr {REMOVED_IN}.", err=True)
    return old


def require(value: T | None, flag: str) -> T:
    """A required option that has a deprecated spelling cannot be required by the parser (the
    old spelling alone would fail its check), so the command checks it: one line, exit 2, as a
    missing option always was."""
    if value is None:
        raise LrfrError(f"missing option {flag} (it is required; see --help)")
    return value


def old_spelling(decl: str, new: str) -> Any:
    """The hidden option that still accepts ``decl`` (``-m``, ``--margin``) for ``new``."""
    return typer.Option(decl, hidden=True, help=f"Deprecated spelling of {new} (works until lrfr {REMOVED_IN}).")
