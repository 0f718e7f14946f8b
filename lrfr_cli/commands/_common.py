"""Shared plumbing for subcommands: global state, error handling, workspace access."""

from __future__ import annotations

import errno
import functools
import math
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.markup import escape

from ..errors import LrfrError
from ..ui import State
from ..workspace import Workspace, disk_full_error

F = TypeVar("F", bound=Callable[..., Any])


_STATE: State | None = None


def set_state(st: State) -> None:
    """Called by the app callback once per invocation with the global options."""
    global _STATE
    _STATE = st


def state() -> State:
    """The global options of the current invocation (a default State outside the CLI)."""
    if _STATE is None:
        return State(workspace=os.environ.get("LRFR_WORKSPACE", "./lrfr-workspace"))
    return _STATE


def workspace() -> Workspace:
    return Workspace(state().workspace)


def printable(text: str) -> str:
    """``text`` safe for any terminal: bytes of a file name that were not UTF-8 (lone surrogates,
    as Python decodes such names) shown as ``\\xNN`` instead of crashing the print."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def handle_errors(func: F) -> F:
    """Turn user errors into one red line + exit code; anything else too unless ``--debug``.

    Keeps tracebacks out of users' terminals while ``--debug`` (or ``LRFR_DEBUG=1``) still shows
    them for bug reports.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        st = state()
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except LrfrError as e:
            if st.debug:
                traceback.print_exc()
            st.console.print(f"[red]error:[/red] {escape(printable(str(e)))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            st.console.print("[red]interrupted[/red] (re-run the same command to resume)")
            raise typer.Exit(130) from None
        except MemoryError:
            st.console.print("[red]error:[/red] out of memory; lower --batch-size or --workers")
            raise typer.Exit(1) from None
        except Exception as e:  # noqa: BLE001 - the last line of defence for the user's terminal
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                # A write outside atomic_path (a log or metrics line): still one line, exit 2.
                full = disk_full_error(e.filename or st.workspace)
                if st.debug:
                    traceback.print_exc()
                st.console.print(f"[red]error:[/red] {escape(printable(str(full)))}", highlight=False, soft_wrap=True)
                raise typer.Exit(full.exit_code) from None
            if st.debug or os.environ.get("LRFR_DEBUG") == "1":
                traceback.print_exc()
            else:
                msg = printable(str(e).strip().splitlines()[0]) if str(e).strip() else ""
                st.console.print(
                    f"[red]internal error:[/red] {type(e).__name__}: {msg} (re-run with --debug for the traceback)",
                    highlight=False,
                    soft_wrap=True,
                )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _finite_check(previous: Callable[..., Any] | None) -> Callable[..., Any]:
    def check(ctx: Any, prm: Any, value: Any) -> Any:
        values = value if isinstance(value, (list, tuple)) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                from typer._click.exceptions import BadParameter

                raise BadParameter(f"{v} is not a finite number", ctx=ctx, param=prm)
        return previous(ctx, prm, value) if previous is not None else value

    return check


def refuse_non_finite(command: Any) -> Any:
    """Make every float option of ``command`` refuse ``nan``, ``inf`` and ``-inf``.

    The float parser accepts them, and range checks cannot catch NaN (``nan <= 0`` is false):
    ``--lr nan`` used to start a run that died at step 2. Applied to each command as it is
    loaded (``cli.load_command``), so an option added later is covered without a word in its
    declaration; the check runs while arguments are parsed, before anything is written. Returns
    ``command``.
    """
    for param in getattr(command, "params", ()):
        param.callback = _finite_check(param.callback)
    return command


def resolve_input(path: Path, ws_root: Path) -> Path:
    """A real folder, or a workspace-relative artifact path such as ``aligned/NAME``."""
    # Imported here: data.images pulls numpy and PIL, which `lrfr status` never needs.
    from ..data.images import check_folder

    if not path.exists() and not path.is_absolute() and (ws_root / path).exists():
        path = ws_root / path
    return check_folder(path)
