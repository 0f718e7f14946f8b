"""One table from many eval JSONs: rows are runs, columns are protocol/setting/size metrics.

Plain Python, no pandas: ``lrfr report`` runs in CI after ``lrfr eval`` and should start fast and
depend on nothing the toolkit does not already need; :meth:`Report.to_pandas` gives a DataFrame
when pandas is installed.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import protocols
from ..errors import LrfrError
from ..results import EvalRecord, ResultsError

REPORT_SCHEMA = "lrfr.report/1"
INFO_COLUMNS = ("run", "loss", "backbone", "data", "parent")
_SETTING_ORDER = {"hr-hr": 0, "hr-lr": 1, "lr-lr": 2}
_PARENT_KEYS = ("parent", "parent_run", "from", "from_run", "init_from", "finetune_from")


@dataclass
class RunRow:
    """One run: where it came from (its ``config.json``) and every metric its evals hold."""

    run: str
    info: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    evals: list[str] = field(default_factory=list)
    sr: dict[str, Any] | None = None  # the eval's super_resolution block when probes were super-resolved

    def as_dict(self, columns: list[str]) -> dict[str, Any]:
        return {"run": self.run, **{k: self.info.get(k, "") for k in INFO_COLUMNS[1:]},
                **{c: self.metrics.get(c) for c in columns}}


@dataclass
class Report:
    rows: list[RunRow]
    columns: list[str]  # headline metrics, in protocol / setting / size order
    records: list[EvalRecord]
    notes: list[str] = field(default_factory=list)

    def all_metrics(self) -> dict[str, list[str]]:
        """Every metric name any run has → the runs that have it (sorted like the columns)."""
        out: dict[str, list[str]] = {}
        for row in self.rows:
            for m in row.metrics:
                out.setdefault(m, []).append(row.run)
        return {k: out[k] for k in sorted(out, key=metric_sort_key)}

    # ------------------------------------------------------------------ formats
    def to_records(self) -> list[dict[str, Any]]:
        return [r.as_dict(self.columns) for r in self.rows]

    def to_csv(self) -> str:
        """Fractions as written in the eval JSONs (full precision); empty cell = not evaluated."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([*INFO_COLUMNS, *self.columns])
        for r in self.to_records():
            w.writerow(["" if r[c] is None else (repr(r[c]) if isinstance(r[c], float) else r[c]) for c in (*INFO_COLUMNS, *self.columns)])
        return buf.getvalue()

    def to_markdown(self) -> str:
        """Percentages with two decimals, as the README's results tables show them; rows whose
        probes were super-resolved get a second table with their SR network's PSNR/SSIM."""
        head = [*INFO_COLUMNS, *(f"{c} %" for c in self.columns)]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] * len(INFO_COLUMNS) + [" ---: "] * len(self.columns)) + "|"]
        for r in self.to_records():
            cells = [_md(str(r[c] or "–")) for c in INFO_COLUMNS] + [pct(r[c]) for c in self.columns]
            lines.append("| " + " | ".join(cells) + " |")
        sr_rows = [r for r in self.rows if r.sr]
        if sr_rows:
            lines += ["", "SR front ends (PSNR dB / SSIM on the Y channel of the SR run's held-out faces, vs bicubic):", "",
                      "| run | SR run | arch | trained at px | size px | SR PSNR | bicubic PSNR | SR SSIM | bicubic SSIM |",
                      "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for r in sr_rows:
                sr = r.sr or {}
                val = sr.get("validation") or {}
                for size in sr.get("trained_sizes") or []:
                    num = [val.get(f"val_{k}@{size}") for k in ("psnr", "bicubic_psnr", "ssim", "bicubic_ssim")]
                    cells = [f"{v:.2f}" if i < 2 and v is not None else (f"{v:.4f}" if v is not None else "–") for i, v in enumerate(num)]
                    lines.append(f"| {_md(r.run)} | {_md(str(sr.get('run')))} | {sr.get('method')} | "
                                 f"{','.join(map(str, sr.get('trained_sizes') or []))} | {size} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self, gates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "columns": self.columns,
            "runs": [{**{k: (row.run if k == "run" else row.info.get(k, "")) for k in INFO_COLUMNS},
                      "metrics": {k: row.metrics[k] for k in sorted(row.metrics, key=metric_sort_key)},
                      "evals": row.evals, **({"super_resolution": row.sr} if row.sr else {})} for row in self.rows],
            "gates": gates or [],
        }

    def to_pandas(self) -> Any:
        """The table as a ``pandas.DataFrame`` indexed by run (needs pandas installed)."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise LrfrError("pandas is not installed; use to_records() or to_csv()") from e
        return pd.DataFrame(self.to_records()).set_index("run")


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def metric_sort_key(name: str) -> tuple[Any, ...]:
    """protocol (in registration order), then setting (hr-hr, hr-lr, lr-lr), then size numerically, then the sub-metric."""
    # the sub-metric follows the first ':' after the '/' (a protocol id may hold one: bin:cfp_fp/hr-lr@16:auc)
    cut = name.find(":", max(name.find("/"), 0))
    head, sub = (name, "") if cut < 0 else (name[:cut], name[cut + 1:])
    proto, _, rest = head.partition("/")
    setting, at, size = rest.partition("@")
    dataset = proto.split("-", 1)[0]
    return (protocols.order(dataset), proto, _SETTING_ORDER.get(setting, 5), setting,
            int(size) if at and size.isdigit() else -1, rest, sub != "", sub)


# --------------------------------------------------------------------------- finding evals
def find_evals(ws_root: Path, paths: list[Path], runs: list[str]) -> list[Path]:
    """The eval JSONs to report: given files/folders, ``evals/RUN/`` of ``--runs``, or all of ``evals/``."""
    found: list[Path] = []
    for p in paths:
        q = p if p.exists() or p.is_absolute() else ws_root / p
        if q.is_dir():
            found += sorted(q.rglob("*.json"))
        elif q.exists():
            found.append(q)
        else:
            raise LrfrError(f"{p}: no such eval JSON or folder")
    for r in runs:
        name = Path(r).name  # runs/RUN and RUN both work
        d = ws_root / "evals" / name
        files = sorted(d.glob("*.json")) if d.is_dir() else []
        if not files:
            have = sorted(x.name for x in (ws_root / "evals").iterdir() if x.is_dir()) if (ws_root / "evals").is_dir() else []
            raise LrfrError(f"--runs {r}: no evaluations in {d} (evaluated runs: {', '.join(have) or 'none'}); run `lrfr eval --model runs/{name}` first")
        found += files
    if not paths and not runs:
        d = ws_root / "evals"
        found = sorted(d.glob("*/*.json")) if d.is_dir() else []
        if not found:
            raise LrfrError(f"no evaluations in {d}; run `lrfr eval --dataset lfw --model runs/RUN` first, or pass eval JSON files")
    found = [f for f in dict.fromkeys(found) if not f.name.startswith(".")]  # temp files of a writer
    if not found:
        raise LrfrError("no eval JSONs among the given paths")
    return found


def load_records(paths: list[Path]) -> list[EvalRecord]:
    return [EvalRecord.load(p) for p in paths]


# --------------------------------------------------------------------------- building
def run_info(ws_root: Path, rec: EvalRecord) -> dict[str, str]:
    """loss, backbone, training data and parent run from ``runs/RUN/config.json`` (ours), or what
    the eval knows of an external checkpoint."""
    model = rec.doc["model"]
    info = {"loss": "", "backbone": str(model.get("backbone") or ""), "data": "", "parent": "",
            "source": str(model.get("source") or "")}
    if model.get("source") == "external":
        info["data"] = f"external ({(rec.doc.get('model') or {}).get('checkpoint', '')})"
        return info
    cfg_file = ws_root / "runs" / rec.run / "config.json"
    ckpt = model.get("checkpoint")
    if not cfg_file.is_file() and ckpt:  # the eval's checkpoint sits in RUN/checkpoints/
        cand = Path(str(ckpt)).parent.parent / "config.json"
        cfg_file = cand if cand.is_file() else cfg_file
    try:
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cfg = {}
    if not isinstance(cfg, dict):
        cfg = {}
    info["loss"] = str(cfg.get("loss") or cfg.get("method") or "")
    info["backbone"] = str(cfg.get("backbone") or info["backbone"])
    info["data"] = _short_data(cfg.get("data"))
    parent = next((cfg[k] for k in _PARENT_KEYS if cfg.get(k)), "")
    if isinstance(parent, dict):  # finetune records {"name", "source", "checkpoint", "checkpoint_sha1", ...}
        parent = parent.get("name") or parent.get("checkpoint") or ""
    info["parent"] = Path(str(parent)).name if parent else ""
    return info


def _short_data(data: Any) -> str:
    if not data:
        return ""
    if isinstance(data, dict):
        data = data.get("name") or data.get("path") or data.get("source") or json.dumps(data, sort_keys=True)
    s = str(data)
    m = re.search(r"(lists|aligned)/[^/\s]+", s)
    return m.group(0) if m else (Path(s).name or s)


def row_name(rec: EvalRecord) -> str:
    """The report row an eval belongs to: its run, or ``RUN+sr:SRRUN`` when ``lrfr eval --sr``
    super-resolved its LR probes, so bicubic and SR results of one recogniser sit side by side."""
    sr = rec.doc.get("super_resolution")
    return f"{rec.run}+sr:{sr['run']}" if isinstance(sr, dict) and sr.get("run") else rec.run


def build_report(records: list[EvalRecord], ws_root: Path) -> Report:
    """Rows by run (a run's evals merged); a metric two evals of one run both hold is taken from
    the newer eval and noted."""
    if not records:
        raise LrfrError("no eval records to report")
    rows: dict[str, RunRow] = {}
    seen: dict[tuple[str, str], tuple[str, str]] = {}  # (run, metric) -> (created, file)
    columns: set[str] = set()
    notes: list[str] = []
    for rec in sorted(records, key=lambda r: str(r.doc.get("created") or "")):
        name = row_name(rec)
        row = rows.get(name)
        if row is None:
            row = rows[name] = RunRow(name, run_info(ws_root, rec))
        if name != rec.run:
            row.sr = rec.doc["super_resolution"]
        row.evals.append(str(rec.path) if rec.path else "")
        try:
            metrics = rec.metrics()
        except (AttributeError, TypeError, ValueError) as e:
            raise ResultsError(f"{rec.path}: results of an unexpected shape ({e}); re-run `lrfr eval`") from None
        for m in metrics:
            key = (name, m.name)
            if key in seen and row.metrics.get(m.name) != m.value:
                notes.append(f"{name}: {m.name} is in {Path(seen[key][1]).name} and {Path(str(rec.path)).name}; using the newer {Path(str(rec.path)).name}")
            seen[key] = (str(rec.doc.get("created") or ""), str(rec.path))
            row.metrics[m.name] = m.value
            if m.headline:
                columns.add(m.name)
    return Report(rows=[rows[k] for k in sorted(rows)], columns=sorted(columns, key=metric_sort_key),
                  records=records, notes=notes)
