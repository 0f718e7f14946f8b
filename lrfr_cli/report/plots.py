"""The report's figures (matplotlib, Agg backend; imported only when plots are made).

Every figure has the same pixel size (:data:`SIZE_PX`), so a README or CI artefact page can lay
them out without surprises; ``bbox_inches="tight"`` is avoided because it changes that size.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import protocols
from ..progress import ProgressFn, null_progress
from ..results import EvalRecord
from .table import Report, row_name

DPI = 100
FIGSIZE = (8.0, 5.0)
SIZE_PX = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))  # (width, height) of every PNG


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, plt: Any) -> Path:
    from ..workspace import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def planned(report: Report, ws_root: Path) -> list[tuple[str, Callable[[Any], Any]]]:
    """``(file name, draw(plt) -> figure)`` for every figure this report has data for."""
    # which figures a record gets is its protocol's ``figures`` (lrfr_cli.protocols), in registration order
    def having(figure: str) -> list[str]:
        return [p.name for p in protocols.PROTOCOLS.values() if figure in p.figures]

    sized = [r for r in report.records if r.dataset in having("accuracy_vs_size") + having("roc_per_size")]
    jobs: list[tuple[str, Callable[[Any], Any]]] = []
    groups: dict[tuple[str, str], list[EvalRecord]] = {}
    for r in sized:
        groups.setdefault((r.protocol_id, r.setting or "hr-lr"), []).append(r)
    for (proto, setting), recs in sorted(groups.items()):
        if any(len(r.results) > 1 for r in recs) and recs[0].dataset in having("accuracy_vs_size"):
            jobs.append((f"accuracy_vs_size_{_safe(proto)}_{setting}.png", lambda plt, p=proto, s=setting, rs=recs: _accuracy_vs_size(plt, p, s, rs)))
        for r in recs:
            if r.dataset in having("roc_per_size") and any(isinstance(v.get("roc"), dict) for v in r.results.values()):
                jobs.append((f"roc_{_safe(row_name(r))}_{_safe(proto)}_{setting}.png", lambda plt, rec=r: _roc_per_size(plt, rec)))
    for r in report.records:
        if any(isinstance(v, dict) and isinstance(v.get("quality_bins"), dict) for v in r.results.values()):
            jobs.append((f"quality_{_safe(row_name(r))}_{_safe(r.protocol_id)}_{r.setting or 'hr-lr'}.png",
                         lambda plt, rec=r: _accuracy_by_quality(plt, rec)))
    for ds in having("cmc"):
        recs = [r for r in report.records if r.dataset == ds and any(v.get("cmc") for v in r.results.values())]
        if recs:
            jobs.append((f"cmc_{ds}.png", lambda plt, rs=recs, d=ds: _cmc(plt, d, rs)))
    for ds in having("roc"):
        recs = [r for r in report.records if r.dataset == ds and "native" in r.results]
        if recs:
            jobs.append((f"{ds}_roc.png", lambda plt, rs=recs: _survface_roc(plt, rs)))
    for row in report.rows:
        f = ws_root / "runs" / row.run / "metrics.jsonl"
        if f.is_file():
            lines = read_metrics(f)
            if lines:
                jobs.append((f"training_{_safe(row.run)}.png", lambda plt, n=row.run, ls=lines: _training(plt, n, ls)))
    return jobs


def make_plots(report: Report, ws_root: Path, out_dir: Path, progress: ProgressFn = null_progress) -> list[Path]:
    """Draw every planned figure into ``out_dir``; returns the PNG paths."""
    jobs = planned(report, ws_root)
    if not jobs:
        return []
    plt = _pyplot()
    progress(0, total=len(jobs))
    out = []
    for name, draw in jobs:
        out.append(_save(draw(plt), out_dir / name, plt))
        progress(1)
    return out


# --------------------------------------------------------------------------- figures
def _fig(plt: Any, title: str, ncols: int = 1) -> tuple[Any, Any]:
    fig, ax = plt.subplots(1, ncols, figsize=FIGSIZE, dpi=DPI, layout="constrained", squeeze=False)
    fig.suptitle(title, fontsize=11)
    return fig, ax[0]


def _accuracy_vs_size(plt: Any, proto: str, setting: str, recs: list[EvalRecord]) -> Any:
    fig, (ax,) = _fig(plt, f"{proto} {setting}: verification accuracy vs probe size")
    for r in sorted(recs, key=lambda r: r.run):
        pts = sorted((int(k), v["accuracy"]) for k, v in r.results.items() if v.get("accuracy") is not None)
        xs, ys = [p[0] for p in pts], [100 * p[1] for p in pts]
        ax.plot(xs, ys, marker="o", label=row_name(r))
        stds = [100 * (r.results[str(x)].get("accuracy_std") or 0.0) for x in xs]
        if any(stds):
            ax.fill_between(xs, [y - s for y, s in zip(ys, stds)], [y + s for y, s in zip(ys, stds)], alpha=0.15)
    ax.set_xscale("log", base=2)
    sizes = sorted({int(k) for r in recs for k in r.results})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("probe size (px, up-sampled back to the input size)")
    ax.set_ylabel("accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _roc_per_size(plt: Any, rec: EvalRecord) -> Any:
    fig, (ax,) = _fig(plt, f"{row_name(rec)} · {rec.protocol_id} {rec.setting}: ROC per probe size")
    for k, v in rec.results.items():
        roc = v.get("roc")
        if isinstance(roc, dict):
            ax.plot(roc["fpr"], roc["tpr"], label=f"{k} px (AUC {100 * v.get('auc', float('nan')):.1f} %)")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


QUALITY_AXES = (("feature_norm", "feature norm of the face (model)", False),
                ("laplacian_variance", "Laplacian variance of the face (log)", True))


def _accuracy_by_quality(plt: Any, rec: EvalRecord) -> Any:
    """Accuracy of the pairs in each quality quintile, a line per probe size: where a quality
    threshold would drop the faces the model gets wrong."""
    fig, axes = _fig(plt, f"{row_name(rec)} · {rec.protocol_id} {rec.setting}: accuracy by face quality", ncols=len(QUALITY_AXES))
    for ax, (measure, label, log) in zip(axes, QUALITY_AXES):
        for k, v in rec.results.items():
            bins = (v.get("quality_bins") or {}).get(measure) if isinstance(v, dict) else None
            if bins:
                ax.plot([b["median"] for b in bins], [100 * b["accuracy"] for b in bins], marker="o", label=f"{k} px")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(f"{label}: bin median")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy % (pairs in the bin)")
    axes[0].legend(fontsize=8, loc="lower right")
    return fig


def _cmc(plt: Any, dataset: str, recs: list[EvalRecord]) -> Any:
    keys = sorted({k for r in recs for k, v in r.results.items() if v.get("cmc")})
    fig, axes = _fig(plt, f"{dataset}: cumulative match characteristic", ncols=len(keys))
    for ax, key in zip(axes, keys):
        for r in sorted(recs, key=lambda r: r.run):
            c = (r.results.get(key) or {}).get("cmc")
            if c:
                ax.plot(range(1, len(c) + 1), [100 * x for x in c], marker=".", label=r.run)
        metres = next((r.results[key].get("metres") for r in recs if key in r.results and r.results[key].get("metres")), None)
        ax.set_title(key if key != "native" else dataset, fontsize=10) if metres is None else ax.set_title(f"{key} ({metres} m)", fontsize=10)
        ax.set_xlabel("rank")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("identification rate %")
    axes[0].legend(fontsize=8, loc="lower right")
    return fig


def _survface_roc(plt: Any, recs: list[EvalRecord]) -> Any:
    fig, (ax,) = _fig(plt, "QMUL-SurvFace verification: ROC with the TAR@FAR points")
    for r in sorted(recs, key=lambda r: r.run):
        res = r.results["native"]
        roc = res.get("roc")
        line = None
        if isinstance(roc, dict):
            pts = [(f, t) for f, t in zip(roc["fpr"], roc["tpr"]) if f > 0]
            (line,) = ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], label=f"{r.run} (AUC {100 * res.get('auc', float('nan')):.1f} %)")
        tf = res.get("tar_at_far") or {}
        fars = sorted((float(k), v) for k, v in tf.items())
        ax.scatter([f for f, _ in fars], [100 * v for _, v in fars], color=line.get_color() if line else None, zorder=3,
                   label=None if line else r.run)
        for f, v in fars:
            ax.annotate(f"{100 * v:.1f}", (f, 100 * v), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate (log)")
    ax.set_ylabel("true accept rate %")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` lines as dicts; a line cut off by a crash or not JSON is skipped."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return []
    for ln in text.splitlines():
        try:
            d = json.loads(ln)
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and isinstance(d.get("step"), (int, float)):
            out.append(d)
    return out


_NOT_TERMS = {"step", "epoch", "lr", "images_per_s", "time", "event"}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _training(plt: Any, run: str, lines: list[dict[str, Any]]) -> Any:
    train = [d for d in lines if "loss" in d and not any(k.startswith("val_") for k in d)]
    val = [d for d in lines if any(k.startswith("val_") for k in d)]
    vkeys = [k for k in dict.fromkeys(k for d in val for k in d) if k.startswith("val_") and k not in ("val_threshold", "val_pairs")]
    fig, axes = _fig(plt, f"{run}: training", ncols=3 if vkeys else 2)
    a_loss, a_lr = axes[0], axes[1]
    terms = [k for k in dict.fromkeys(k for d in train for k in d) if k not in _NOT_TERMS and not k.startswith("val_")]
    for k in terms:
        pts = [(d["step"], d[k]) for d in train if _finite(d.get(k))]
        if pts:
            a_loss.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1.5 if k == "loss" else 1.0)
    a_loss.set_title("loss and its terms", fontsize=10)
    a_loss.set_xlabel("step")
    if terms:
        a_loss.legend(fontsize=7)
    pts = [(d["step"], d["lr"]) for d in train if _finite(d.get("lr"))]
    a_lr.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:green")
    a_lr.set_title("learning rate", fontsize=10)
    a_lr.set_xlabel("step")
    if vkeys:
        a_val = axes[2]
        for k in vkeys:
            pts = [(d["step"], d[k]) for d in val if _finite(d.get(k))]
            a_val.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
        a_val.set_title("validation", fontsize=10)
        a_val.set_xlabel("step")
        a_val.legend(fontsize=7)
    for a in axes:
        a.grid(alpha=0.3)
    return fig
