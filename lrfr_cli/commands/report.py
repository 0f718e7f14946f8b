"""``lrfr report``: one table and figures from the workspace's evals, and CI gates on them."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer

from ..errors import LrfrError
from ..progress import null_progress
from ..registry import check_choice
from ..results import METRIC_HELP
from ..ui import State
from ._common import handle_errors, state, workspace

FORMATS = ("table", "md", "csv", "json")


def _table(st: State, report) -> None:  # type: ignore[no-untyped-def]
    """Transposed for the terminal: a run per column, a metric per row (a dozen metric columns
    do not fit 80 characters; a handful of runs do). md/csv/json keep a run per row."""
    from rich.table import Table

    from ..report.table import INFO_COLUMNS, pct

    recs = report.to_records()
    t = Table(title="evaluations (accuracy, rank-1, TAR, AUC in %)", title_justify="left")
    t.add_column("run")
    for r in recs:
        t.add_column(str(r["run"]), justify="right", overflow="fold")
    for c in INFO_COLUMNS[1:]:
        t.add_row(c, *(str(r[c] or "–") for r in recs), style="dim")
    for c in report.columns:
        t.add_row(c, *(pct(r[c]) for r in recs))
    st.out.print(t)


def _write_stdout(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


@handle_errors
def report_cmd(
    evals: list[Path] = typer.Argument(None, help="Eval JSONs or folders of them (default: every evals/RUN/*.json of the workspace).", show_default=False),
    runs: list[str] = typer.Option([], "--runs", "-r", help="Report these runs' evals (evals/RUN/*.json); repeatable. RUN or runs/RUN."),
    fmt: str = typer.Option("table", "--format", "-f", help="What stdout gets: table (rich; a run per column), md, csv or json (a run per row). csv/json are pipeable: notes and gate lines go to stderr."),
    name: str = typer.Option("latest", "--name", help="Write the report to reports/NAME/ (results.md/.csv/.json, PNG figures, manifest)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write reports/NAME/ (--no-save: stdout and gates only)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw the figures: accuracy vs probe size, ROC per size, SCface/TinyFace CMC, SurvFace ROC, training curves."),
    fail_under: list[str] = typer.Option([], "--fail-under", help="CI gate METRIC=VALUE (repeatable): exit 1 when a run's metric is below VALUE (0.90 or 90%). E.g. lfw/hr-lr@16=0.90, survface:tar@far=0.01=0.2 (split at the last '='). " + METRIC_HELP),
    baseline: Path | None = typer.Option(None, "--baseline", help="Regression gate: a report's results.json (or an eval JSON) to compare with; every table column of a run with the same name may drop at most --max-drop."),
    max_drop: float = typer.Option(0.0, "--max-drop", min=0.0, max=1.0, help="With --baseline: the largest allowed drop, as a fraction (0.01 = one point of accuracy)."),
    list_metrics: bool = typer.Option(False, "--list-metrics", help="Print every metric name the evals hold (one per line; with --format json a JSON list) and exit."),
) -> None:
    """Tables and plots from the workspace's evaluations; --fail-under gates CI.

    Rows are runs (with loss, backbone, training data and parent run from runs/RUN/config.json),
    columns the headline metric of each protocol, setting and probe size. Exit codes: 0 = every
    gate holds, 1 = a gate failed (the failing lines are printed on stderr), 2 = bad usage or input.

    Examples: lrfr report · lrfr report --format json | jq . ·
    lrfr report --fail-under lfw-pairsDevTest/hr-lr@16=0.90 --format csv ·
    lrfr report --baseline main/results.json --max-drop 0.01 · lrfr report --list-metrics
    """
    from ..report import (
        build_report,
        check_baseline,
        check_fail_under,
        find_evals,
        load_baseline,
        load_records,
        parse_fail_under,
    )

    st = state()
    fmt = "json" if st.json else fmt.strip().lower()
    check_choice(fmt, FORMATS, "--format")
    if max_drop and baseline is None:
        raise LrfrError("--max-drop needs --baseline OTHER.json")
    if save and (not name or "/" in name or name in (".", "..") or name.startswith(".")):
        raise LrfrError(f"--name {name!r}: use a plain folder name (reports/NAME/) without '/' or a leading dot")
    specs = parse_fail_under(fail_under)  # syntax errors before any file is read
    ws = workspace()
    records = load_records(find_evals(ws.root, list(evals or []), runs))
    report = build_report(records, ws.root)
    for n in report.notes:
        st.warn(n)

    if list_metrics:
        names = report.all_metrics()
        if fmt == "json":
            _write_stdout(json.dumps([{"metric": k, "runs": v, "column": k in report.columns} for k, v in names.items()]))
        else:
            _write_stdout("\n".join(names))
        return

    gates = []
    notes: list[str] = []
    if specs:
        g, n = check_fail_under(report, specs)
        gates += g
        notes += n
    if baseline is not None:
        g, n = check_baseline(report, load_baseline(baseline), max_drop)
        gates += g
        notes += n
    for n in notes:
        st.info(n)
    gate_dicts = [g.as_dict() for g in gates]

    out_dir = None
    figures: list[Path] = []
    if save:
        from ..report.output import write_report

        options = {"evals": [str(p) for p in evals or []], "runs": runs, "fail_under": fail_under,
                   "baseline": str(baseline) if baseline else None, "max_drop": max_drop, "plots": plots}
        bar = st.progress("figures", unit="fig") if plots else contextlib.nullcontext(null_progress)
        with bar as progress:
            out_dir, figures = write_report(report, ws.root, name, gates=gate_dicts, options=options, plots=plots, progress=progress)

    if fmt == "json":
        doc = report.to_json(gate_dicts)
        doc["report"] = str(out_dir) if out_dir else None
        _write_stdout(json.dumps(doc, indent=2))
    elif fmt == "csv":
        _write_stdout(report.to_csv())
    elif fmt == "md":
        _write_stdout(report.to_markdown())
    elif not st.quiet:
        _table(st, report)

    failed = [g for g in gates if not g.ok]
    for g in gates:
        if not g.ok:
            st.console.print(f"[red]{g.line()}[/red]", highlight=False, soft_wrap=True)
        elif not st.quiet:
            st.console.print(g.line(), highlight=False, soft_wrap=True)
    where = f" → {out_dir} ({len(figures)} figure(s))" if out_dir else ""
    verdict = (f", gates: [red]{len(failed)} of {len(gates)} failed[/red]" if failed else f", gates: {len(gates)} passed") if gates else ""
    if not st.quiet:
        st.console.print(f"[green]reported[/green] {len(report.rows)} run(s) from {len(records)} eval(s){verdict}{where}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
