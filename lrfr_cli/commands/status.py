"""``lrfr status``: what the workspace holds, with status, size and age."""

from __future__ import annotations

import time
from datetime import datetime

import typer
from rich.table import Table

from ..workspace import folder_size
from ._common import handle_errors, state, workspace


def _age(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return max(0.0, time.time() - datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return None


def _human_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.0f}{unit}"
    return f"{seconds:.0f}s"


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


@handle_errors
def status() -> None:
    """List the workspace's artifacts: command, status, size and age."""
    st = state()
    ws = workspace()
    rows = []
    for art in ws.artifacts():
        m = art.manifest() or {}
        age = _age(m.get("finished") or m.get("started"))
        rows.append(
            {
                "artifact": art.rel,
                "command": m.get("command"),
                "status": m.get("status"),
                "bytes": folder_size(art.path),
                "age_s": None if age is None else round(age, 1),
                "started": m.get("started"),
                "finished": m.get("finished"),
                "counts": {k: v for k, v in (m.get("counts") or {}).items() if not isinstance(v, (list, dict))},
                "error": m.get("error"),
            }
        )
    if st.json:
        st.summary("", {"command": "status", "workspace": str(ws.root), "artifacts": rows})
        return
    if not rows:
        st.summary(f"workspace {ws.root} holds no artifacts yet", {})
        return
    table = Table(title=f"workspace {ws.root}", title_justify="left")
    for col in ("artifact", "command", "status", "size", "age"):
        table.add_column(col, justify="right" if col in ("size", "age") else "left")
    colours = {"complete": "green", "running": "yellow"}
    for r in rows:
        s = r["status"] or "?"
        if s == "running" and r["error"]:
            s = "failed"
        colour = colours.get(s, "red")
        table.add_row(r["artifact"], r["command"] or "?", f"[{colour}]{s}[/{colour}]", _human_size(r["bytes"]), _human_age(r["age_s"]))
    st.table(table)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
