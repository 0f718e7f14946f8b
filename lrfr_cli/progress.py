"""The progress callback that library code reports through, below every layer that uses it.

Library layers never print: data, align, embed, sr and report take a ``progress`` callback and
call it as work advances. Commands make a real one (a rich bar, :meth:`lrfr_cli.ui.State.progress`);
everything else gets :func:`null_progress`. Kept apart from :mod:`lrfr_cli.ui` so that taking a
callback does not mean importing the renderer.
"""

from __future__ import annotations

from typing import Any, Protocol


class ProgressFn(Protocol):
    """Progress callback handed to library code: ``progress(advance=1, total=None, **info)``.

    ``total`` (re)sets the bar length, ``info`` values (loss, lr, ...) are shown after the bar.
    """

    def __call__(self, advance: int = 1, total: int | None = None, **info: Any) -> None: ...


def null_progress(advance: int = 1, total: int | None = None, **info: Any) -> None:
    """A progress callback that does nothing (library default)."""


__all__ = ["ProgressFn", "null_progress"]
