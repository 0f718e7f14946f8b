"""The ``lrfr`` Typer app: global options and subcommand registration, nothing else.

Command modules pull in torch, OpenCV and the model zoo (seconds of start-up), while ``lrfr
--help``, ``status`` and ``make-list`` need none of it. So the top-level group lists commands
from the static :data:`COMMANDS` table and imports a command's module only when that command is
invoked, completed or asked for its ``--help``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer >= 0.2x vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # type: ignore[no-redef]

from . import __version__
from .commands._common import refuse_non_finite, set_state
from .commands._panels import COMMAND_PANELS, OTHER_COMMANDS, apply_panels
from .help_layout import ReadableHelp, readable
from .ui import State


@dataclass(frozen=True)
class CommandSpec:
    """One subcommand: its CLI name, the module under ``lrfr_cli.commands`` and its help line.

    ``help`` is what ``lrfr --help`` shows without importing the module; a test checks it equals
    the first line of the command's docstring.
    """

    name: str
    module: str
    help: str


# In help order. A module that does not exist (yet) is left out of help, completion and dispatch;
# adding a command is one line here plus ``commands/<module>.py`` with ``register(app)``.
COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("align", "align", "Detect faces (MTCNN, batched) and warp each onto the ArcFace template, resumably."),
    CommandSpec("make-list", "make_list", "Write 'rel/path label' lines (labels 0..N-1 in sorted identity order) and a label map."),
    CommandSpec("make-bin", "make_bin", "Write an insightface .bin verification pack from pairs of aligned faces."),
    CommandSpec("degrade", "degrade", "Down-sample every image to each size (then optionally back up), resumably, on all cores."),
    CommandSpec("train", "train", "Train a face-embedding backbone with a margin loss; resumable, DDP under torchrun."),
    CommandSpec("finetune", "finetune", "Fine-tune a trained model for low resolution (octuplet, DeriveNet, distillation, Siamese, CRB)."),
    CommandSpec("eval", "eval", "Measure a model under a low-resolution protocol; writes evals/RUN/<dataset>.json."),
    CommandSpec("quality", "quality", "Score every face of a folder by quality (feature norm, Laplacian sharpness) to drop unusable ones."),
    CommandSpec("sr", "sr", "Super-resolve a folder's faces with an SR run (writes sr/NAME/<size>px/ and a contact sheet)."),
    CommandSpec("report", "report", "Tables and plots from the workspace's evaluations; --fail-under gates CI."),
    CommandSpec("export", "export", "Export a model to ONNX (dynamic batch, preprocessing in its metadata), checked against PyTorch."),
    CommandSpec("status", "status", "List the workspace's artifacts: command, status, size and age."),
)

# Global options users also type after the subcommand (`lrfr eval ... --json`): moved in front of
# it before parsing, so both positions work. Value-taking ones take their value along.
_GLOBAL_FLAGS = {"--json", "--quiet", "-q", "--debug"}
_GLOBAL_VALUED = {"--workspace", "-w"}


def available_commands() -> list[CommandSpec]:
    """The specs whose module exists, found without importing it (and so without torch)."""
    return [s for s in COMMANDS if importlib.util.find_spec(f"{__package__}.commands.{s.module}") is not None]


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options that follow the subcommand name to before it."""
    names = {s.name for s in COMMANDS}
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


def load_command(spec: CommandSpec, rich_markup_mode: Any = "rich") -> TyperCommand:
    """Import ``spec``'s module and build its click command from the module's ``register(app)``.

    Modules keep the plain ``register(app)`` hook, so they do not know they are loaded lazily.
    The command's ``--help`` is laid out by :mod:`~lrfr_cli.help_layout`, its options grouped
    into the panels of :mod:`~lrfr_cli.commands._panels`.
    """
    module = importlib.import_module(f"{__package__}.commands.{spec.module}")
    sub = typer.Typer(add_completion=False, rich_markup_mode=rich_markup_mode)
    module.register(sub)
    for info in sub.registered_commands:
        name = info.name or typer.main.get_command_name(info.callback.__name__)  # type: ignore[union-attr]
        if name == spec.name:
            info.cls = readable(info.cls)
            command = typer.main.get_command_from_info(info, pretty_exceptions_short=True, rich_markup_mode=rich_markup_mode)
            apply_panels(spec.name, command)
            return refuse_non_finite(command)  # type: ignore[no-any-return]
    raise RuntimeError(f"{module.__name__}.register() did not register a command named {spec.name!r}")


class LazyCommand(TyperCommand):
    """Stands in for a command in the top-level listing; becomes the real one when parsed.

    Help listings and name completion read only ``name``/``short_help``/``hidden``; everything
    that parses arguments goes through :meth:`make_context`, which hands over to the real command
    (so ``ctx.command`` is never this placeholder).
    """

    def __init__(self, spec: CommandSpec, rich_markup_mode: Any) -> None:
        super().__init__(
            spec.name, help=spec.help, short_help=spec.help, rich_markup_mode=rich_markup_mode, rich_help_panel=COMMAND_PANELS.get(spec.name, OTHER_COMMANDS)
        )
        self.spec = spec
        self._real: TyperCommand | None = None

    def load(self) -> TyperCommand:
        """The real command (its module is imported on the first call)."""
        if self._real is None:
            self._real = load_command(self.spec, self.rich_markup_mode)
        return self._real

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        return self.load().make_context(info_name, args, parent=parent, **extra)


def _one_line_usage_error(e: ClickException) -> typer.Exit:
    """Print a click usage error as one red line (like LrfrError) instead of a panel."""
    from rich.console import Console
    from rich.markup import escape

    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = " ".join(e.format_message().split())
    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(message + hint)}", soft_wrap=True)
    return typer.Exit(e.exit_code)


class LazyGroup(ReadableHelp, TyperGroup):
    """The top-level group: commands from :data:`COMMANDS`, modules imported on first use."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for spec in available_commands():
            self.commands[spec.name] = LazyCommand(spec, self.rich_markup_mode)

    def _usage_errors_as_one_line(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except NoArgsIsHelpError:
            raise
        except UsageError as e:
            raise _one_line_usage_error(e) from None

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        return self._usage_errors_as_one_line(super().make_context, info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        return self._usage_errors_as_one_line(super().invoke, ctx)


class _App(typer.Typer):
    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not args and "args" not in kwargs:
            kwargs["args"] = hoist_global_options(sys.argv[1:])
        return super().__call__(*args, **kwargs)


app = _App(
    name="lrfr",
    cls=LazyGroup,
    help="Low-resolution face recognition: align faces, build lists, degrade, train and evaluate; every command works in one managed workspace.",
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
    version: bool | None = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Low-resolution face recognition toolkit; every command writes into one managed workspace."""
    ctx.obj = State(workspace=workspace, json=json_out, quiet=quiet, debug=debug)
    set_state(ctx.obj)


if __name__ == "__main__":  # pragma: no cover
    app()
