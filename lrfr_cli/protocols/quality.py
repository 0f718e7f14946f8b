"""Per-face quality in eval records: summaries per variant, the per-face table, accuracy by quality bin.

Two measures, both of the face exactly as the network saw it (after degradation and up-sampling):
``feature_norm``, the norm of the model's raw embedding (AdaFace's quality proxy: a face the
model cannot place gets a short vector), and ``laplacian_variance`` / ``laplacian_mean_abs``,
the sharpness Approach2's margin is set from (:mod:`lrfr_cli.data.quality`). Users with
low-quality footage use them to drop faces the model cannot handle; the bins show where that
threshold pays off (accuracy of the pairs whose weaker face falls in each quality quintile).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from ..embed import Embeddings, Variant

MEASURES = ("feature_norm", "laplacian_variance", "laplacian_mean_abs")
BIN_MEASURES = ("feature_norm", "laplacian_variance")
QUANTILES = (0.1, 0.5, 0.9)


def summarize(values: np.ndarray) -> dict[str, float]:
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    out = {"mean": float(v.mean())}
    out.update({f"p{int(q * 100)}": float(np.quantile(v, q)) for q in QUANTILES})
    return out


def face_quality(emb: Embeddings, requests: dict[Variant, list[str]]) -> tuple[dict[str, Any], list[tuple[str, str, float, float, float]]]:
    """``({variant name: {measure: summary}}, per-face rows (rel, variant, norm, lap var, lap |.|))``."""
    summary: dict[str, Any] = {}
    rows: list[tuple[str, str, float, float, float]] = []
    for variant, rels in requests.items():
        if not rels:
            continue
        q = emb.quality(variant, list(rels))
        name = emb.aliases.get(variant, variant).name
        summary[name] = {m: summarize(q[m]) for m in MEASURES}
        rows.extend(zip(rels, [name] * len(rels), *(q[m].tolist() for m in MEASURES)))
    return summary, rows


def write_csv(path: Path, rows: list[tuple[str, str, float, float, float]]) -> None:
    from ..workspace import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "variant", *MEASURES])
        for r in rows:
            w.writerow([r[0], r[1], *(f"{v:.6g}" for v in r[2:])])


def accuracy_bins(quality: np.ndarray, correct: np.ndarray, n_bins: int = 5) -> list[dict[str, Any]]:
    """Pairs split into ``n_bins`` equal-count bins by ``quality`` (quantile edges; ties kept
    together, so a bin may hold more), each with its quality range, median and accuracy."""
    import numpy as np

    q = np.asarray(quality, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    order = np.argsort(q, kind="stable")
    out = []
    for part in np.array_split(order, min(n_bins, len(q))):
        if part.size == 0:
            continue
        qs = q[part]
        out.append({"lo": float(qs.min()), "hi": float(qs.max()), "median": float(np.median(qs)),
                    "pairs": int(part.size), "accuracy": float(c[part].mean())})
    return out


def pair_quality_bins(qa: dict[str, np.ndarray] | None, qb: dict[str, np.ndarray], correct: np.ndarray) -> dict[str, Any]:
    """Bins by the weaker face of each pair (``qa`` None: only the probe side counts, the HR
    gallery face being sharp by construction)."""
    import numpy as np

    out: dict[str, Any] = {"by": "probe face" if qa is None else "weaker face of the pair"}
    for m in BIN_MEASURES:
        q = qb[m] if qa is None else np.minimum(qa[m], qb[m])
        out[m] = accuracy_bins(q, correct)
    return out
