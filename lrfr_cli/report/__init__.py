"""Reports over eval JSONs: one table (md/csv/json), figures, and CI gates.

Nothing here imports torch; matplotlib is imported only when figures are drawn.
"""

from .gates import (
    GateResult,
    check_baseline,
    check_fail_under,
    load_baseline,
    parse_fail_under,
)
from .table import REPORT_SCHEMA, Report, RunRow, build_report, find_evals, load_records

__all__ = [
    "REPORT_SCHEMA",
    "GateResult",
    "Report",
    "RunRow",
    "build_report",
    "check_baseline",
    "check_fail_under",
    "find_evals",
    "load_baseline",
    "load_records",
    "parse_fail_under",
]
