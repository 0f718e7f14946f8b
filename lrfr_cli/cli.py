"""The ``lrfr`` Typer app: global options and subcommand registration, nothing else."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

import typer

from . import __version__
from .commands._common import set_state
from .ui import State

# Subcommand modules in help order; each exposes register(app). A module that is not present in
# this version is skipped.
COMMANDS = ("align", "make_list", "degrade", "train", "finetune", "eval", "report", "status")

# Global options users also type after the subcommand (`lrfr eval ... --json`): moved in front of
# it before parsing, so both positions work. Value-taking ones take their value along.
_GLOBAL_FLAGS = {"--json", "--quiet", "-q", "--debug"}
_GLOBAL_VALUED = {"--workspace", "-w"}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options that follow the subcommand name to before it."""
    names = {n.replace("_", "-") for n in COMMANDS}
    idx = next((i for i, a in enumerate(argv) if a in names), None)
    if idx is None:
        return argv
    head, cmd, rest = argv[:idx], argv[idx], argv[idx + 1 :]
    moved, kept = [], []
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--":
            kept += rest[i:]
            break
        if a in _GLOBAL_FLAGS:
            moved.append(a)
        elif a in _GLOBAL_VALUED and i + 1 < len(rest):
            moved += [a, rest[i + 1]]
            i += 1
        elif a.startswith("--workspace="):
            moved.append(a)
        else:
            kept.append(a)
        i += 1
    return head + moved + [cmd] + kept


class _App(typer.Typer):
    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not args and "args" not in kwargs:
            kwargs["args"] = hoist_global_options(sys.argv[1:])
        return super().__call__(*args, **kwargs)


app = _App(
    name="lrfr",
    help="Low-resolution face recognition: align, make-list, degrade, train, eval, status (finetune and report are planned).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode="rich",
)



def _version(value: bool) -> None:
    if value:
        typer.echo(f"lrfr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    workspace: str = typer.Option(
        "./lrfr-workspace", "--workspace", "-w", envvar="LRFR_WORKSPACE", help="Workspace folder every command reads and writes (env LRFR_WORKSPACE)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one machine-readable JSON object on stdout instead of the rich summary."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes; errors still go to stderr."),
    debug: bool = typer.Option(False, "--debug", envvar="LRFR_DEBUG", help="Show full tracebacks on errors."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Low-resolution face recognition toolkit; every command writes into one managed workspace."""
    ctx.obj = State(workspace=workspace, json=json_out, quiet=quiet, debug=debug)
    set_state(ctx.obj)


def _register() -> None:
    for name in COMMANDS:
        modname = f"{__package__}.commands.{name}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        module.register(app)


_register()

if __name__ == "__main__":  # pragma: no cover
    app()
