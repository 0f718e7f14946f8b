"""``--help`` that reads at 80 columns: option names are never cut short, help text wraps.

Typer lays out each options panel as a rich ``Table`` without column settings. When the terminal
is narrower than the rows, rich shrinks the widest columns to the width of the next widest, so at
80 columns every column ends up about 18 wide: long option names end in ``…`` (a user cannot
copy ``--checkpoint-eve…``) and help text is squeezed into a column no wider than ``<str>``'s.

:class:`HelpTable` stands in for that ``Table`` while help is rendered (:func:`readable_tables`):
columns that are empty in every row are dropped, every column but the last gets exactly the width
of its longest unbreakable word (names never break; ``<int range> [x>=1]`` wraps at the space),
and the last (help) column takes what is left and folds words too long for it rather than
cutting them. It is a layout rule, not a per-option fix, so options added later are covered.
Only typer's help rendering sees the class; every other table keeps rich's behaviour.

Smaller rules save lines: a flag's off form joins its name (``--flip/--no-flip``), ``[default:
x]`` follows the help text instead of starting a line, flags show no ``<bool>`` (they take no
value), and wrapped docstrings are joined into paragraphs again (:func:`reflow`).
:class:`ReadableHelp` applies all of it to a command; ``lrfr_cli.cli`` mixes it into every one.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.columns import Columns
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text
from typer.core import TyperCommand


def _is_blank(cell: Any) -> bool:
    if isinstance(cell, Text):
        return not cell.plain.strip()
    if isinstance(cell, str):
        return not cell.strip()
    return False


def _run_on(cell: Any) -> Any:
    """Typer's help cell (text, ``[default: x]``, ``[required]`` as rich ``Columns``) as one text.

    ``Columns`` starts a new line for ``[default: x]`` whenever the text fills the column, which
    costs a line on most options; run on, it follows the text's last word.
    """
    parts = getattr(cell, "renderables", None)
    if not isinstance(cell, Columns) or not parts or not all(isinstance(p, Text) for p in parts):
        return cell
    return Text(" ").join(p for p in parts if p.plain)


# Several names on one line up to this width (``--plots/--no-plots``), even where they are wider
# than every single name of the panel: stacking them would save the help column little.
_STACK_ABOVE = 20


def _stack(cell: Any, width: int) -> Any:
    """``--a,--b`` or ``--a/--no-a`` wider than ``width``: one name a line, separators kept."""
    if not isinstance(cell, Text) or cell.cell_len <= width:
        return cell
    cuts = [m.end() for m in re.finditer(r"[,/]", cell.plain)]
    return Text("\n").join(cell.divide(cuts)) if cuts else cell


def _tidy_names(columns: list[Column]) -> None:
    """One name column as click shows it, never wider than its longest single name.

    Typer's option rows are [required], long names, short names, '--no-x' names, '-X' names,
    type, help. A flag's off form joins its name (``--flip/--no-flip``) instead of taking a
    column of its own; a cell of several names wider than the column's longest single name and
    than ``_STACK_ABOVE`` (``--freeze-backbone/--no-freeze-backbone``) lists one name a line. Nothing changes unless
    the four name columns hold nothing but option names.
    """
    if len(columns) not in (6, 7):
        return
    name_columns = columns[len(columns) - 6 : len(columns) - 2]
    cells = [c for col in name_columns for c in col._cells if not _is_blank(c)]
    if not all(isinstance(c, Text) and c.plain.startswith("-") for c in cells):
        return
    long_, short, neg_long, neg_short = name_columns
    for main, negative in ((long_, neg_long), (short, neg_short)):
        main._cells = [
            Text.assemble(a, "/", b) if not _is_blank(a) and not _is_blank(b) else (b if _is_blank(a) else a)
            for a, b in zip(main._cells, negative._cells, strict=True)
        ]
        negative._cells = [Text("") for _ in negative._cells]
        widest = max((len(name) for c in main._cells for name in re.split(r"[,/]", c.plain)), default=0)
        main._cells = [_stack(c, max(widest, _STACK_ABOVE)) for c in main._cells]


class HelpTable(Table):
    """A table whose leading columns keep their content's width; the last one wraps."""

    _fitted = False

    def _fit_columns(self, console: Console, options: ConsoleOptions) -> None:
        if self._fitted or not self.columns:
            return
        self._fitted = True
        _tidy_names(self.columns)
        # Typer always adds columns for '--no-x' forms and short flags; most panels have none.
        self.columns = [c for c in self.columns if not all(_is_blank(cell) for cell in c._cells)] or self.columns[-1:]
        for index, column in enumerate(self.columns):
            column._index = index
            column.overflow = "fold"
        *leading, last = self.columns
        for column in leading:
            # The narrowest width at which no word of any cell has to break.
            column.width = max((Measurement.get(console, options, cell).minimum for cell in column._cells), default=1)
            column.ratio = None
        last.width, last.ratio, last.no_wrap = None, 1, False
        last._cells = [_run_on(cell) for cell in last._cells]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self._fit_columns(console, options)
        return super().__rich_console__(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        self._fit_columns(console, options)
        return super().__rich_measure__(console, options)


@contextmanager
def readable_tables() -> Iterator[None]:
    """Render typer's help panels with :class:`HelpTable` for the duration of the block."""
    from typer import rich_utils

    saved = rich_utils.Table
    rich_utils.Table = HelpTable  # type: ignore[misc]
    try:
        yield
    finally:
        rich_utils.Table = saved  # type: ignore[misc]


def tidy_types(params: list[Any], ctx: Any) -> None:
    """Shorter type column: none for flags, ``<int>`` for ``<int range>`` (the range follows).

    ``--force <bool>`` reads as if ``--force`` took a value, and ``<float range> [x>=0.0]``
    says "range" twice. Only ``metavar`` changes, which click uses for help text alone.
    """
    for param in params:
        if param.param_type_name != "option" or param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
            continue
        shown = param.display_type_rich(ctx) if hasattr(param, "display_type_rich") else None
        if isinstance(shown, str) and shown.endswith(" range>"):
            param.metavar = shown[: -len(" range>")] + ">"


def reflow(text: str | None) -> str | None:
    """Join a docstring's wrapped lines into paragraphs, as click does (typer >= 0.2x keeps them).

    Docstrings are wrapped at ~100 columns; kept as they are, each source line ends a line at 80
    too, leaving a stub behind it. A line ending in '·' ends an item of a list (the commands'
    "Examples:"), and a paragraph starting with click's '\\b' keeps its lines.
    """
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    out = []
    for para in paragraphs:
        if para.startswith("\b"):
            out.append(para)
            continue
        lines = [line.strip() for line in para.splitlines()]
        out.append("".join(line + ("\n" if line.endswith("·") else " ") for line in lines[:-1]) + (lines[-1] if lines else ""))
    return "\n\n".join(out)


class ReadableHelp:
    """Mixin for a click command: ``--help`` uses :class:`HelpTable` and option panels.

    ``help_panel`` is the panel ``--help`` itself (created lazily by click) is listed in; None
    is typer's default "Options" panel.
    """

    help_panel: str | None = None

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None and self.help_panel is not None:
            option.rich_help_panel = self.help_panel
        return option

    def format_help(self, ctx: Any, formatter: Any) -> None:
        tidy_types(self.get_params(ctx), ctx)  # type: ignore[attr-defined]
        saved = self.help, self.epilog  # type: ignore[attr-defined]
        self.help, self.epilog = reflow(self.help), reflow(self.epilog)  # type: ignore[attr-defined]
        try:
            with readable_tables():
                super().format_help(ctx, formatter)  # type: ignore[misc]
        finally:
            self.help, self.epilog = saved  # type: ignore[attr-defined]


class ReadableCommand(ReadableHelp, TyperCommand):
    """A :class:`TyperCommand` with :class:`ReadableHelp`."""


def readable(cls: type[TyperCommand] | None) -> type[TyperCommand]:
    """``cls`` (a command class a module chose, or TyperCommand) with :class:`ReadableHelp`."""
    if cls is None or cls is TyperCommand:
        return ReadableCommand
    if issubclass(cls, ReadableHelp):
        return cls
    return type(f"Readable{cls.__name__}", (ReadableHelp, cls), {})
