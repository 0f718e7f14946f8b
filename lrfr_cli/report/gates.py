"""CI gates over a report: absolute floors (``--fail-under``) and regressions (``--baseline``).

Every metric is a fraction where higher is better (see :mod:`lrfr_cli.results`), so one rule
serves all: a gate fails when ``value < floor`` or ``baseline - value > max_drop``. A gate that
cannot be evaluated at all (unknown metric, baseline with nothing in common) is a usage error,
not a pass: a typo must never turn a CI gate green.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import LrfrError
from ..results import EvalRecord, ResultsError
from .table import REPORT_SCHEMA, Report

# A float's last-bit noise must not fail a gate set at exactly the reported value.
_EPS = 1e-9


@dataclass
class GateResult:
    gate: str  # the option as the user wrote it, normalised
    run: str
    metric: str
    value: float
    limit: float  # the floor the value had to reach
    ok: bool
    baseline: float | None = None

    def line(self) -> str:
        base = f" (baseline {self.baseline:.4f}, drop {self.baseline - self.value:.4f})" if self.baseline is not None else ""
        verdict = "ok  " if self.ok else "FAIL"
        rel = ">=" if self.ok else "<"
        return f"{verdict} {self.run}: {self.metric} = {self.value:.4f} {rel} {self.limit:.4f}{base}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def closest(name: str, known: list[str], n: int = 5) -> list[str]:
    """The known metric names nearest to ``name``: difflib's ratio, plus names sharing its prefix."""
    near = difflib.get_close_matches(name, known, n=n, cutoff=0.5)
    if len(near) < n:
        head = name.split(":")[0].split("@")[0]
        near += [k for k in known if k.startswith(head) and k not in near][: n - len(near)]
    return near


def unknown_metric(name: str, known: list[str]) -> LrfrError:
    near = closest(name, known)
    hint = f"closest: {', '.join(near)}" if near else f"known: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}"
    return LrfrError(f"no evaluation has metric {name!r}; {hint} (all names: lrfr report --list-metrics)")


def parse_value(text: str, what: str) -> float:
    t = text.strip()
    try:
        v = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise LrfrError(f"{what}: {text!r} is not a number (write 0.90 or 90%)") from None
    if not 0.0 <= v <= 1.0:
        raise LrfrError(f"{what}: {text!r} is outside [0, 1]; metrics are fractions (write 0.90 or 90%)")
    return v


def parse_fail_under(specs: list[str]) -> list[tuple[str, float]]:
    """``METRIC=VALUE`` → (metric, floor). Split at the last '=': names such as
    ``survface:tar@far=0.01`` contain one."""
    out = []
    for s in specs:
        name, eq, val = s.rpartition("=")
        if not eq or not name.strip():
            raise LrfrError(f"--fail-under {s!r}: write METRIC=VALUE, e.g. lfw/hr-lr@16=0.90")
        out.append((name.strip(), parse_value(val, f"--fail-under {s}")))
    return out


def check_fail_under(report: Report, specs: list[tuple[str, float]]) -> tuple[list[GateResult], list[str]]:
    """Every run that has the metric must reach the floor. Returns results and notes (runs
    without the metric are skipped and named)."""
    known = list(report.all_metrics())
    results: list[GateResult] = []
    notes: list[str] = []
    for name, floor in specs:
        have = [r for r in report.rows if name in r.metrics]
        if not have:
            raise unknown_metric(name, known)
        missing = [r.run for r in report.rows if name not in r.metrics]
        if missing:
            notes.append(f"--fail-under {name}: not evaluated for {', '.join(missing)} (skipped)")
        for r in have:
            v = r.metrics[name]
            results.append(GateResult(f"{name}>={floor:g}", r.run, name, v, floor, v + _EPS >= floor))
    return results, notes


def load_baseline(path: Path) -> dict[str, dict[str, float]]:
    """``{run: {metric: value}}`` from a report's results.json (``--format json``) or an eval JSON."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise LrfrError(f"--baseline {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LrfrError(f"--baseline {path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"--baseline {path}: not valid JSON ({e.msg} at line {e.lineno}; truncated?)") from None
    if isinstance(doc, dict) and str(doc.get("schema", "")).startswith("lrfr.report/"):
        if doc["schema"] != REPORT_SCHEMA:
            raise ResultsError(f"--baseline {path}: report schema {doc['schema']} is not {REPORT_SCHEMA}; regenerate it with this lrfr")
        try:
            return {str(r["run"]): {str(k): float(v) for k, v in r["metrics"].items() if v is not None} for r in doc["runs"]}
        except (KeyError, TypeError, ValueError) as e:
            raise ResultsError(f"--baseline {path}: malformed report JSON ({e})") from None
    rec = EvalRecord.from_dict(doc, path)
    return {rec.run: {m.name: m.value for m in rec.metrics()}}


def check_baseline(report: Report, baseline: dict[str, dict[str, float]], max_drop: float) -> tuple[list[GateResult], list[str]]:
    """Each table column (headline metric) of each run must stay within ``max_drop`` of the
    baseline's value for the same run. Runs are matched by name; when neither side shares a name
    and each holds exactly one run, those two are compared (a renamed run in CI)."""
    notes: list[str] = []
    pairs = [(r, baseline[r.run]) for r in report.rows if r.run in baseline]
    if not pairs and len(report.rows) == 1 and len(baseline) == 1:
        (bname, bvals), = baseline.items()
        notes.append(f"--baseline: comparing run {report.rows[0].run} with the baseline's only run {bname}")
        pairs = [(report.rows[0], bvals)]
    results: list[GateResult] = []
    for row, base in pairs:
        for m in report.columns:
            if m in row.metrics and m in base:
                v, b = row.metrics[m], base[m]
                results.append(GateResult(f"{m} drop<={max_drop:g}", row.run, m, v, b - max_drop, b - v <= max_drop + _EPS, baseline=b))
    if not results:
        raise LrfrError(
            f"--baseline shares no run and metric with this report (baseline runs: {', '.join(sorted(baseline)) or 'none'}; "
            f"report runs: {', '.join(r.run for r in report.rows)}); pass the matching evals or --runs"
        )
    return results, notes
