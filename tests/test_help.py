"""``--help`` a person can read at 80 columns (issue 18, section 3).

Every command is found by walking the app (so a new command is covered without a test edit), its
help is rendered as ``COLUMNS=80 lrfr CMD --help`` renders it, and the rendered text is read back
the way a user reads it: which names each panel row starts with, which panel it is in, how wide
each line is. The expectations come from the click objects (every ``opts``/``secondary_opts`` of
every parameter) and from :mod:`lrfr_cli.commands._panels`, not from the rendering code.
"""

from __future__ import annotations

import re

import pytest
import typer
import typer.rich_utils
from rich.cells import cell_len
from typer.core import TyperArgument, TyperGroup
from typer.main import get_command
from typer.testing import CliRunner

import lrfr_cli.cli as cli_mod
from lrfr_cli.cli import LazyCommand, app, hoist_global_options
from lrfr_cli.commands._panels import OTHER, PANELS, option_name
from lrfr_cli.help_layout import reflow

WIDTH = 80
_PANEL_TOP = re.compile(r"^╭─ (.+?) ─+╮$")


def _walk(group: TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], typer.core.TyperCommand]]:
    """Every (path, command) under ``group``, lazy placeholders replaced by the real commands."""
    found = []
    for name in group.list_commands(None):  # type: ignore[arg-type]
        cmd = group.get_command(None, name)  # type: ignore[arg-type]
        if isinstance(cmd, LazyCommand):
            cmd = cmd.load()
        found.append(((*prefix, name), cmd))
        if isinstance(cmd, TyperGroup):
            found += _walk(cmd, (*prefix, name))
    return found


def _command(path: tuple[str, ...]) -> typer.core.TyperCommand:
    root = get_command(app)
    return root if not path else dict(_walk(root))[path]  # type: ignore[arg-type]


def _render(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", None)  # a TERMINAL_WIDTH in the caller's env would win over COLUMNS
    r = CliRunner().invoke(app, hoist_global_options([*path, "--help"]), env={"COLUMNS": str(WIDTH)})
    assert r.exit_code == 0, r.output
    return r.stdout


def _rows(text: str) -> dict[str, str]:
    """Each name shown at the start of a panel row -> the panel's title.

    A row starts with its names, at column 2 or, after the required marker '*', at column 5;
    typer joins several long names with ',' and a flag's off form with '/'. Continuation lines
    start at the help column, further right, so a name mentioned in help text is not collected.
    """
    names: dict[str, str] = {}
    panel = None
    for line in text.splitlines():
        top = _PANEL_TOP.match(line)
        if top:
            panel = top.group(1)
            continue
        body = line[1:]
        if panel is None or not line.startswith("│") or len(body) - len(body.lstrip()) > 4:
            continue
        tokens = body.split()
        if tokens[:1] == ["*"]:
            tokens = tokens[1:]
        for i, token in enumerate(tokens):
            if not (token.startswith("-") or (i == 0 and panel == "Arguments")):
                break
            for name in re.split(r"[,/]", token):
                names[name.rstrip(".")] = panel
    return names


def _check_help(path: tuple[str, ...], cmd: typer.core.TyperCommand, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _render(path, monkeypatch)
    wide = [line for line in text.splitlines() if cell_len(line) > WIDTH]
    assert not wide, f"{len(wide)} lines wider than {WIDTH}: {wide[:2]}"
    assert "…" not in text, "something was cut short"
    shown = _rows(text)
    params = [p for p in cmd.get_params(typer.Context(cmd)) if not getattr(p, "hidden", False)]
    assert params
    for param in params:
        wanted = [param.name] if isinstance(param, TyperArgument) else [*param.opts, *param.secondary_opts]
        missing = [name for name in wanted if name not in shown]
        assert not missing, f"lrfr {' '.join(path)}: {missing} not shown in full at the start of a row"


# Names only: listing them imports no command module, so collecting this file stays cheap.
@pytest.mark.parametrize("name", [None, *get_command(app).list_commands(None)], ids=lambda n: f"lrfr {n or ''}".strip())  # type: ignore[attr-defined]
def test_help_shows_every_name_in_full_within_80_columns(name: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's --help (and its subcommands', should it become a group) at COLUMNS=80."""
    root = get_command(app)
    if name is None:
        _check_help((), root, monkeypatch)
        return
    found = [((name,), _command((name,)))]
    if isinstance(found[0][1], TyperGroup):
        found += _walk(found[0][1], (name,))  # type: ignore[arg-type]
    for path, cmd in found:
        _check_help(path, cmd, monkeypatch)


def test_panel_tables_name_real_options_once() -> None:
    """A stale or misspelt name in PANELS would silently leave its option in 'Other options'."""
    commands = dict(_walk(get_command(app)))  # type: ignore[arg-type]
    assert set(PANELS) <= {name for (name,) in commands}
    for name, table in PANELS.items():
        listed = [opt for names in table.values() for opt in names]
        assert len(listed) == len(set(listed)), f"{name}: an option is in two panels"
        real = {option_name(p) for p in commands[(name,)].params if p.param_type_name == "option"}
        assert set(listed) <= real, f"{name}: {sorted(set(listed) - real)} are not options of lrfr {name}"


@pytest.mark.parametrize("name", sorted(PANELS))
def test_each_option_is_listed_in_its_panel_in_table_order(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _render((name,), monkeypatch)
    shown = _rows(text)
    table = PANELS[name]
    for panel, options in table.items():
        for opt in options:
            assert shown[opt] == panel, f"lrfr {name} {opt}: listed under {shown[opt]!r}, not {panel!r}"
    assert shown["--help"] == OTHER
    titles = [m.group(1) for m in map(_PANEL_TOP.match, text.splitlines()) if m and m.group(1) != "Arguments"]
    expected = list(table)
    if any(v == OTHER for v in shown.values()):
        expected.append(OTHER)
    assert titles == expected


def test_a_new_command_with_a_very_long_option_name_is_laid_out_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule is generic: a command no table knows, a 44-character option, a long help text."""
    import sys
    import types

    long_name = "--a-rather-long-option-name-nobody-would-cut"
    mod = types.ModuleType("lrfr_cli.commands.wide_fake")
    mod.__spec__ = types.SimpleNamespace(name=mod.__name__)  # what find_spec reports for sys.modules entries

    def wide(
        value: int = typer.Option(3, long_name, "-A", min=1, help="A help text long enough to need several lines " * 4),
        switch: bool = typer.Option(True, "--switch/--no-switch", help="An on/off flag."),
    ) -> None:
        """A command added later."""

    mod.register = lambda a: a.command("wide")(wide)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(cli_mod, "COMMANDS", (*cli_mod.COMMANDS, cli_mod.CommandSpec("wide", "wide_fake", "A command added later.")))
    assert "wide" in get_command(app).list_commands(None)  # type: ignore[attr-defined]
    text = _render(("wide",), monkeypatch)
    assert all(cell_len(line) <= WIDTH for line in text.splitlines())
    shown = _rows(text)
    assert {long_name, "-A", "--switch", "--no-switch", "--help"} <= set(shown)
    assert "<int>" in text and "<bool>" not in text  # flags take no value, so no type is shown


def test_reflow_joins_wrapped_lines_but_keeps_list_items_and_verbatim_blocks() -> None:
    doc = """First line.

    A paragraph wrapped
    at the source's width.

    Examples: lrfr a ·
    lrfr b --x ·
    lrfr c

    \b
    kept
    as is
    """
    assert reflow(doc) == "First line.\n\nA paragraph wrapped at the source's width.\n\nExamples: lrfr a ·\nlrfr b --x ·\nlrfr c\n\n\b\nkept\nas is"
    assert reflow(None) is None


def test_train_help_is_grouped_and_shorter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's numbers: 448 lines with names cut short; the panels it asked for, in order."""
    text = _render(("train",), monkeypatch)
    titles = [m.group(1) for m in map(_PANEL_TOP.match, text.splitlines()) if m]
    for want in ("Data", "Model", "Loss and LR recipe", "Loop and run", "Devices and distributed", "Super-resolution (--task sr)"):
        assert want in titles
    assert len(text.splitlines()) < 300
