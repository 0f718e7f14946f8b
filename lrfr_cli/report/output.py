"""``reports/NAME/``: results.md/.csv/.json, the figures and a manifest, replaced as a whole.

The folder is built under a temporary name and swapped in by renames, so a reader (a CI step
uploading artefacts, ``lrfr status``) sees either the previous report or the complete new one,
never figures of one report beside the table of another.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import LrfrError
from ..progress import ProgressFn, null_progress
from ..workspace import MANIFEST, atomic_write_text, fingerprint_file, git_commit, remove_dead_writers_temps
from .table import Report


def copy_contact_sheets(ws_root: Path, out_dir: Path) -> list[Path]:
    """``lrfr sr``'s before/after contact sheets (``sr/NAME/contact_<size>px.png``) into the report
    as ``sr_contact_NAME_<size>px.png``: the faces a reader should look at beside the SR numbers."""
    out = []
    for sheet in sorted((ws_root / "sr").glob("*/contact_*px.png")):
        dst = out_dir / f"sr_contact_{sheet.parent.name}_{sheet.name.removeprefix('contact_')}"
        shutil.copyfile(sheet, dst)
        out.append(dst)
    return out


def write_report(report: Report, ws_root: Path, name: str, *, gates: list[dict[str, Any]], options: dict[str, Any],
                 plots: bool = True, progress: ProgressFn = null_progress) -> tuple[Path, list[Path]]:
    """Write ``reports/NAME/`` and return it with the PNG paths (relative names inside it)."""
    if not name or "/" in name or name in (".", "..") or name.startswith("."):
        raise LrfrError(f"--name {name!r}: use a plain folder name without '/'")
    final = ws_root / "reports" / name
    tmp = final.with_name(f".{name}.tmp-{os.getpid()}")
    remove_dead_writers_temps(final.parent)  # what a report killed by SIGKILL left behind
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise LrfrError(f"cannot write the report under {final.parent}: {e.strerror or e}") from e
    try:
        atomic_write_text(tmp / "results.md", report.to_markdown())
        atomic_write_text(tmp / "results.csv", report.to_csv())
        atomic_write_text(tmp / "results.json", json.dumps(report.to_json(gates), indent=2) + "\n")
        pngs: list[Path] = []
        if plots:
            from .plots import make_plots

            pngs = make_plots(report, ws_root, tmp, progress=progress)
            pngs += copy_contact_sheets(ws_root, tmp)
        manifest = {
            "artifact": f"reports/{name}",
            "command": "report",
            "options": options,
            "inputs": {str(r.path): fingerprint_file(r.path, content=False) for r in report.records if r.path},
            "status": "complete",
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "counts": {"runs": len(report.rows), "evals": len(report.records), "figures": len(pngs)},
            "files": ["results.md", "results.csv", "results.json", *(p.name for p in pngs)],
        }
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
        old = final.with_name(f".{name}.old-{os.getpid()}")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, [final / p.name for p in pngs]
