"""QMUL-SurvFace face verification: the official positive/negative pair lists (``.mat``).

Layout (the dataset's own)::

    ROOT/Face_Verification_Test_Set/verification_images/<file>.jpg
    ROOT/Face_Verification_Test_Set/positive_pairs_names.mat   key positive_pairs_names: N x 2 cell of file names
    ROOT/Face_Verification_Test_Set/negative_pairs_names.mat   key negative_pairs_names: N x 2 cell

(ROOT may also be the ``Face_Verification_Test_Set`` folder itself.) The faces are native
low-resolution surveillance crops: they are letterboxed to the input size (longer side scaled,
aspect ratio kept, edge-padded: :func:`sources.letterbox`), not stretched and not degraded further.
Reported: TAR at FAR = 30 %, 10 %, 1 %, 0.1 % and ROC AUC over all pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LrfrError
from .base import EvalOptions, EvalProtocol, MetricRow, Plan, pct, result_base, tar_rows

if TYPE_CHECKING:  # numpy and torch load with plan_survface, not with the registry (lrfr report needs neither)
    from ..embed import Embeddings

FARS = (0.3, 0.1, 0.01, 0.001)
SUB = "Face_Verification_Test_Set"
LAYOUT = f"ROOT/{SUB}/verification_images/*.jpg, ROOT/{SUB}/positive_pairs_names.mat, ROOT/{SUB}/negative_pairs_names.mat"


def _strings(x: Any) -> list[str]:
    """Flatten a MATLAB cell/char array as scipy.io.loadmat returns it into Python strings."""
    import numpy as np

    if isinstance(x, str):
        return [x]
    if isinstance(x, bytes):
        return [x.decode()]
    arr = np.asarray(x)
    if arr.dtype.kind in "US":
        return [str(v).strip() for v in arr.ravel()]
    out: list[str] = []
    for v in arr.ravel():
        out.extend(_strings(v))
    return out


def read_pairs_mat(path: Path, key: str) -> list[tuple[str, str]]:
    import numpy as np
    from scipy.io import loadmat

    if not path.is_file():
        raise LrfrError(f"{path.name} not found at {path.parent}; expected layout: {LAYOUT}")
    try:
        mat = loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises many types for a bad file
        raise LrfrError(f"{path}: not a readable MATLAB .mat file ({type(e).__name__}: {e})") from e
    if key not in mat:
        keys = [k for k in mat if not k.startswith("__")]
        if len(keys) != 1:
            raise LrfrError(f"{path}: no variable {key!r} (found {', '.join(keys) or 'none'})")
        key = keys[0]
    cell = np.asarray(mat[key], dtype=object)
    if cell.ndim != 2 or 2 not in cell.shape:
        raise LrfrError(f"{path}: {key} should be an N x 2 cell array of file names, got shape {cell.shape}")
    if cell.shape[1] != 2:
        cell = cell.T
    pairs = []
    for i in range(cell.shape[0]):
        a, b = _strings(cell[i, 0]), _strings(cell[i, 1])
        if len(a) != 1 or len(b) != 1:
            raise LrfrError(f"{path}: row {i + 1} of {key} does not hold two file names")
        pairs.append((a[0], b[0]))
    if not pairs:
        raise LrfrError(f"{path}: {key} is empty")
    return pairs


def plan_survface(root: Path, input_size: int = 112) -> Plan:
    import numpy as np

    from .. import metrics as M
    from ..data.sources import ResizedCrops
    from ..embed import Variant

    base = root / SUB if (root / SUB).is_dir() else root
    img_dir = base / "verification_images"
    if not img_dir.is_dir():
        raise LrfrError(f"QMUL-SurvFace not found at {root}; expected layout: {LAYOUT} (pass --data ROOT)")
    pos = read_pairs_mat(base / "positive_pairs_names.mat", "positive_pairs_names")
    neg = read_pairs_mat(base / "negative_pairs_names.mat", "negative_pairs_names")
    pairs = [(a, b, True) for a, b in pos] + [(a, b, False) for a, b in neg]
    for a, b, _ in pairs:
        for f in (a, b):
            if not (img_dir / f).is_file():
                raise LrfrError(f"pair image {f} not found in {img_dir} (expected layout: {LAYOUT})")
    hr = Variant(None)
    rels = list(dict.fromkeys([a for a, _, _ in pairs] + [b for _, b, _ in pairs]))

    def score(emb: Embeddings) -> dict[str, Any]:
        s = M.pair_cosine(emb.get(hr, [a for a, _, _ in pairs]), emb.get(hr, [b for _, b, _ in pairs]))
        y = np.array([t for _, _, t in pairs])
        return {
            "native": {
                "pairs": len(pairs),
                "positive": len(pos),
                "negative": len(neg),
                "auc": M.roc_auc(s, y),
                "tar_at_far": {f"{f:g}": v for f, v in M.tar_at_far(s, y, list(FARS)).items()},
                "roc": M.compact_roc(*M.roc_curve(s, y)[:2]),  # <= 200 points, for `lrfr report`'s ROC plots
            }
        }

    return Plan(
        dataset="survface",
        protocol=f"QMUL-SurvFace verification: {len(pos)} positive + {len(neg)} negative pairs; TAR@FAR and AUC",
        images=ResizedCrops(root=img_dir, name="survface", size=input_size),
        requests={hr: rels},
        score=score,
        info={"pairs": len(pairs)},
    )


class SurvfaceProtocol(EvalProtocol):
    """QMUL-SurvFace verification; metrics ``survface:tar@far=F`` (headline 1 %) and ``survface:auc``."""

    name = "survface"
    title = "QMUL-SurvFace"
    data_dir = "QMUL-SurvFace"
    layout = LAYOUT
    figures = ("roc",)
    metric_help = "survface:tar@far=0.01 (0.3, 0.1, 0.001), survface:auc"

    def plan(self, root: Path, opts: EvalOptions) -> Plan:
        return plan_survface(root, input_size=opts.input_size)

    def table(self, doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
        r = doc["results"]["native"]
        tf = r["tar_at_far"]
        return (["pairs", "TAR@30%", "TAR@10%", "TAR@1%", "TAR@0.1%", "AUC %"],
                [[str(r["pairs"]), pct(tf["0.3"]), pct(tf["0.1"]), pct(tf["0.01"]), pct(tf["0.001"]), pct(r["auc"])]])

    def headline(self, doc: Mapping[str, Any]) -> str:
        r = doc["results"]["native"]
        return f"TAR@FAR=1% {100 * r['tar_at_far']['0.01']:.2f}%, AUC {100 * r['auc']:.2f}%"

    def metrics(self, protocol_id: str, setting: str | None, results: Mapping[str, Any]) -> Iterable[MetricRow]:
        for key, r in results.items():
            base = result_base(protocol_id, key)
            yield from tar_rows(base, r, headline_far="0.01")
            yield f"{base}:auc", r.get("auc"), True


PROTOCOL = SurvfaceProtocol()
