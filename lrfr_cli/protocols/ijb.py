"""IJB-B / IJB-C 1:1 template verification in the layout the insightface release ships::

    ROOT/loose_crop/<n>.jpg                      face crops (loosely cropped around the face)
    ROOT/meta/ijbc_name_5pts_score.txt           '<n>.jpg x1 y1 ... x5 y5 score': 5 points + detector score
    ROOT/meta/ijbc_face_tid_mid.txt              '<n>.jpg TEMPLATE MEDIA': which template and media each crop is
    ROOT/meta/ijbc_template_pair_label.txt       'T1 T2 LABEL' (1 = same subject)

(``ijbb_*`` for IJB-B). ROOT may also be the folder that holds ``IJBC/`` (or ``IJBB/``).

Scoring follows the usual template protocol (insightface's ``ijb_11`` with its defaults):
every crop is aligned with its 5 points (lrfr's similarity warp onto the ArcFace template), its
raw embedding (plus the mirrored crop's with ``--flip``, on by default here) is multiplied by the
detector score, the crops of one media (the frames of a video, or one still) are averaged, the
media of a template summed, the template vector L2-normalised, and a template pair scored by the
cosine. Raw rather than unit embeddings, because the feature norm carries the network's
confidence: a blurred frame then weighs less in its template.

Probes at low resolution as for LFW: ``--setting hr-lr`` keeps the first template of every pair
HR and degrades the second's crops to each ``--sizes`` size (then back up); ``lr-lr`` degrades
both; ``hr-hr`` neither. TAR at FAR 1e-6 ... 1e-1 (headline 1e-4), AUC and a compact ROC per size.

Scale: IJB-C has 469,375 crops, 23,124 templates and 15.7 M pairs, so pooling is a sort and a
sparse matrix product (no Python loop over templates) and pairs are scored by BLAS block products of the template tables (bounded memory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LrfrError
from ..registry import check_choice
from .base import EvalOptions, EvalProtocol, MetricRow, Plan, pct, probe_variants, tar_rows

if TYPE_CHECKING:  # numpy loads with plan_ijb, not with the registry (lrfr report needs neither)
    import numpy as np

    from ..embed import Embeddings

SETTINGS = ("hr-hr", "hr-lr", "lr-lr")
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
HEADLINE_FAR = "0.0001"
CROPS = "loose_crop"
DENSE_BLOCK = 1 << 24  # template-pair scores per block product (128 MB of float64)
PAIR_CHUNK = 16384  # template pairs scored per step: 2 x 64 MB of 512-d float64 rows, whatever the pair count


def far_label(far: float) -> str:
    """``1e-4`` rather than ``0.0001``: short table headers."""
    return f"{far:.0e}".replace("e-0", "e-")


def title(prefix: str) -> str:
    return prefix.upper().replace("IJB", "IJB-")


def layout(prefix: str) -> str:
    return (f"ROOT/{CROPS}/<n>.jpg, ROOT/meta/{prefix}_name_5pts_score.txt, "
            f"ROOT/meta/{prefix}_face_tid_mid.txt, ROOT/meta/{prefix}_template_pair_label.txt")


@dataclass
class IjbMeta:
    """The three meta files, joined on the crop name (row ``i`` of every array is crop ``names[i]``)."""

    names: list[str]
    landmarks: np.ndarray  # N x 5 x 2 float64, loose-crop pixels
    scores: np.ndarray  # N detector scores
    templates: np.ndarray  # N int64
    medias: np.ndarray  # N int64
    t1: np.ndarray  # P int64
    t2: np.ndarray  # P int64
    labels: np.ndarray  # P bool


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise LrfrError(f"{path} does not exist")
    return [(i, ln.split()) for i, ln in enumerate(path.read_text(errors="replace").splitlines(), 1) if ln.strip()]


def read_meta(meta_dir: Path, prefix: str) -> IjbMeta:
    """Parse and cross-check the meta files; every malformed line is one ``file:line`` error."""
    import numpy as np

    lm_file = meta_dir / f"{prefix}_name_5pts_score.txt"
    tm_file = meta_dir / f"{prefix}_face_tid_mid.txt"
    pair_file = meta_dir / f"{prefix}_template_pair_label.txt"

    names: list[str] = []
    vals: list[list[float]] = []
    for i, t in _lines(lm_file):
        try:
            if len(t) != 12:
                raise ValueError
            vals.append([float(v) for v in t[1:]])
        except ValueError:
            raise LrfrError(f"{lm_file}:{i}: expected 'NAME x1 y1 ... x5 y5 SCORE' (12 fields), got {' '.join(t)[:80]!r}") from None
        names.append(t[0])
    if not names:
        raise LrfrError(f"{lm_file}: no crops listed")
    v = np.asarray(vals, dtype=np.float64)
    row = {n: k for k, n in enumerate(names)}
    if len(row) != len(names):
        raise LrfrError(f"{lm_file}: a crop name is listed twice")

    templates = np.full(len(names), -1, dtype=np.int64)
    medias = np.full(len(names), -1, dtype=np.int64)
    for i, t in _lines(tm_file):
        try:
            if len(t) != 3:
                raise ValueError
            tid, mid = int(t[1]), int(t[2])
        except ValueError:
            raise LrfrError(f"{tm_file}:{i}: expected 'NAME TEMPLATE MEDIA', got {' '.join(t)[:80]!r}") from None
        k = row.get(t[0])
        if k is None:
            raise LrfrError(f"{tm_file}:{i}: crop {t[0]} has no landmarks in {lm_file.name}")
        templates[k], medias[k] = tid, mid
    if (templates < 0).any():
        missing = names[int(np.argmax(templates < 0))]
        raise LrfrError(f"{tm_file.name}: crop {missing} (listed in {lm_file.name}) has no template/media ({int((templates < 0).sum())} such crops)")

    pairs: list[tuple[int, int, int]] = []
    for i, t in _lines(pair_file):
        try:
            if len(t) != 3 or t[2] not in ("0", "1"):
                raise ValueError
            pairs.append((int(t[0]), int(t[1]), int(t[2])))
        except ValueError:
            raise LrfrError(f"{pair_file}:{i}: expected 'TEMPLATE1 TEMPLATE2 0|1', got {' '.join(t)[:80]!r}") from None
    if not pairs:
        raise LrfrError(f"{pair_file}: no template pairs")
    p = np.asarray(pairs, dtype=np.int64)
    known = np.unique(templates)
    unknown = np.setdiff1d(np.union1d(p[:, 0], p[:, 1]), known)
    if unknown.size:
        raise LrfrError(f"{pair_file.name}: template {int(unknown[0])} has no crops in {tm_file.name} ({unknown.size} such templates)")
    return IjbMeta(names, v[:, :10].reshape(-1, 5, 2), v[:, 10], templates, medias, p[:, 0], p[:, 1], p[:, 2] == 1)


def template_features(feats: np.ndarray, weights: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(template ids sorted, unit template vectors)`` from per-crop raw embeddings.

    Crop vectors are scaled by ``weights`` (detector scores), averaged within each (template,
    media) and the media means summed per template, then normalised. Both steps are one sparse
    matrix product (a row per group, ``weight / group size`` per crop): one pass over the
    embeddings, ~15x faster than ``np.add.reduceat`` and no Python loop over 23 k templates.
    """
    import numpy as np
    from scipy import sparse

    templates, medias = np.asarray(templates), np.asarray(medias)
    w = np.asarray(weights, dtype=np.float64)
    order = np.lexsort((medias, templates))  # by template, then media
    t, m = templates[order], medias[order]
    new_media = np.r_[True, (t[1:] != t[:-1]) | (m[1:] != m[:-1])]
    group = np.cumsum(new_media) - 1  # (template, media) group of each sorted crop
    counts = np.bincount(group)
    starts = np.flatnonzero(new_media)
    gt = t[starts]
    new_template = np.r_[True, gt[1:] != gt[:-1]]
    tgroup = (np.cumsum(new_template) - 1)[group]  # template row of each sorted crop
    # the media mean then the template sum, folded into one coefficient per crop
    pool = sparse.csr_matrix((w[order] / counts[group], (tgroup, order)), shape=(int(tgroup[-1]) + 1, len(t)))
    tfeat = np.asarray(pool @ np.asarray(feats, dtype=np.float64))
    norm = np.linalg.norm(tfeat, axis=1, keepdims=True)
    if (norm == 0).any():
        raise LrfrError("a template's pooled embedding is zero (all its detector scores are 0?)")
    return gt[new_template], tfeat / norm


def pair_scores(ids1: np.ndarray, f1: np.ndarray, ids2: np.ndarray, f2: np.ndarray, t1: np.ndarray, t2: np.ndarray,
                dense: bool | None = None) -> np.ndarray:
    """Cosine of every template pair, the two sides looked up in their own template tables.

    IJB-C has 15.7 M pairs over 23 k templates: gathering two 512-d rows per pair moves 128 GB
    through memory, while all template-vs-template products by BLAS (in row blocks, keeping only
    the pairs asked for) cost ~3e11 multiply-adds at full speed. ``dense`` (default: when the
    full product is at most 16x the pairs) picks the block product; otherwise rows are gathered
    in chunks into two reused buffers.
    """
    import numpy as np

    r1, r2 = np.searchsorted(ids1, t1), np.searchsorted(ids2, t2)
    out = np.empty(len(t1), dtype=np.float64)
    if dense is None:
        dense = len(ids1) * len(ids2) <= 16 * len(t1)
    if dense:
        order = np.argsort(r1, kind="stable")
        sorted_r1 = r1[order]
        rows = max(1, DENSE_BLOCK // max(1, len(ids2)))
        for b0 in range(0, len(ids1), rows):
            lo, hi = np.searchsorted(sorted_r1, [b0, b0 + rows])
            if lo == hi:
                continue
            sel = order[lo:hi]
            block = f1[b0 : b0 + rows] @ f2.T
            out[sel] = block[r1[sel] - b0, r2[sel]]
        return out
    # two reused gather buffers: fresh 100 MB arrays per chunk cost more in page faults than the dot
    b1 = np.empty((min(PAIR_CHUNK, len(t1)), f1.shape[1]), dtype=np.float64)
    b2 = np.empty_like(b1)
    for s in range(0, len(t1), PAIR_CHUNK):
        e = min(s + PAIR_CHUNK, len(t1))
        n = e - s
        np.take(f1, r1[s:e], axis=0, out=b1[:n])
        np.take(f2, r2[s:e], axis=0, out=b2[:n])
        out[s:e] = np.einsum("ij,ij->i", b1[:n], b2[:n])
    return out


@dataclass
class IjbCrops:
    """Loose crops aligned with the release's 5 points (the image set the embedding pass reads).

    Landmarks live in one array indexed by crop name, not a dict of arrays: 469 k crops must stay
    cheap to hand to DataLoader workers.
    """

    root: Path
    index: dict[str, int]
    landmarks: np.ndarray
    name: str
    size: int = 112
    fingerprint: str = ""

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "size": self.size, "landmarks_sha1": self.fingerprint,
                "align": "release 5-point landmarks, lrfr similarity warp to the ArcFace template (area pre-shrink past 2x)"}

    def load(self, rel: str) -> np.ndarray:
        from ..data.images import ImageReadError, load_rgb
        from ..data.sources import warp_antialiased

        k = self.index.get(rel)
        if k is None:
            raise ImageReadError(f"no landmarks for {rel}")
        return warp_antialiased(load_rgb(self.root / rel), self.landmarks[k], self.size)


def _sha1(path: Path) -> str:
    from ..workspace import file_digest

    return file_digest(path, "sha1")


def find_root(root: Path, prefix: str) -> Path:
    """ROOT itself when it holds ``meta/``, else ``ROOT/IJBC`` (``IJBB``), as the release unpacks."""
    for cand in (root, root / prefix.upper(), root / prefix):
        if (cand / "meta").is_dir():
            return cand
    raise LrfrError(f"{prefix.upper()} not found at {root}; expected layout: {layout(prefix)} (pass --data ROOT)")


def plan_ijb(root: Path, prefix: str, *, setting: str, sizes: list[int], input_size: int, method: str,
             blur: float = 0.0, noise: float = 0.0, jpeg: int | None = None, seed: int = 0, up_method: str = "bicubic") -> Plan:
    import numpy as np

    from .. import metrics as M
    from ..embed import Variant

    check_choice(setting, SETTINGS, "--setting")
    too_big = [s for s in sizes if s > input_size]
    if too_big:
        raise LrfrError(f"--sizes: {too_big[0]} px is larger than the {input_size} px network input ({input_size} = HR)")
    root = find_root(root, prefix)
    meta = read_meta(root / "meta", prefix)
    crops = root / CROPS
    present = {p.name for p in crops.iterdir()} if crops.is_dir() else set()
    absent = [n for n in meta.names if n not in present]
    if absent:
        raise LrfrError(f"{len(absent)} of {len(meta.names)} crops listed in meta/ are missing from {crops}, e.g. {absent[0]}; expected layout: {layout(prefix)}")
    rels = [f"{CROPS}/{n}" for n in meta.names]
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]  # one cache folder per release copy
    images = IjbCrops(root=root, index={r: k for k, r in enumerate(rels)}, landmarks=meta.landmarks, name=f"{prefix}-{tag}",
                      size=input_size, fingerprint=_sha1(root / "meta" / f"{prefix}_name_5pts_score.txt"))

    sizes, variants, sides = probe_variants(setting, sizes, input_size, method, blur=blur, noise=noise, jpeg=jpeg, seed=seed,
                                            up_method=up_method)

    # the crops each side needs: those of the templates that occur on that side of some pair
    side1 = np.isin(meta.templates, np.unique(meta.t1))
    side2 = np.isin(meta.templates, np.unique(meta.t2))
    rel_arr = np.asarray(rels, dtype=object)
    requests: dict[Variant, list[str]] = {}
    for s in sizes:
        a, b = sides(variants[s])
        requests.setdefault(a, []).extend(rel_arr[side1].tolist())
        requests.setdefault(b, []).extend(rel_arr[side2].tolist())
    requests = {v: list(dict.fromkeys(r)) for v, r in requests.items()}

    pools: dict[tuple[Variant, int], tuple[np.ndarray, np.ndarray]] = {}

    def pooled(emb: Embeddings, v: Variant, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Template table of one variant and side, pooled once (hr-lr's HR side serves every size)."""
        key = (v, 1 if mask is side1 else 2)
        if key not in pools:
            sel = np.flatnonzero(mask)
            feats = emb.raw(v, rel_arr[sel].tolist())
            pools[key] = template_features(feats, meta.scores[sel], meta.templates[sel], meta.medias[sel])
        return pools[key]

    def score(emb: Embeddings) -> dict[str, Any]:
        out: dict[str, Any] = {}
        y = meta.labels
        for s in sizes:
            a, b = sides(variants[s])
            ids1, f1 = pooled(emb, a, side1)
            ids2, f2 = (ids1, f1) if (a == b and (side1 == side2).all()) else pooled(emb, b, side2)
            sc = pair_scores(ids1, f1, ids2, f2, meta.t1, meta.t2)
            fpr, tpr, _ = M.roc_curve(sc, y)
            out[str(s)] = {
                "size": s,
                "variant": variants[s].describe(),
                "pairs": int(len(sc)),
                "genuine": int(y.sum()),
                "impostor": int((~y).sum()),
                "templates": int(np.union1d(meta.t1, meta.t2).size),
                "crops": len(meta.names),
                "tar_at_far": {f"{f:g}": v for f, v in M.tar_at_far(sc, y, list(FARS)).items()},
                "auc": M.auc(fpr, tpr),
                "roc": M.compact_roc(fpr, tpr, keep_fars=FARS),
                "mean_genuine": float(sc[y].mean()) if y.any() else None,
                "mean_impostor": float(sc[~y].mean()) if (~y).any() else None,
            }
        return out

    return Plan(
        dataset=prefix,
        protocol=(f"{title(prefix)} 1:1 templates ({len(meta.t1)} pairs: {int(meta.labels.sum())} genuine; "
                  f"{len(meta.names)} crops), {setting}; detector-score-weighted media mean, template sum, cosine"),
        images=images,
        requests=requests,
        score=score,
        info={"root": str(root), "setting": setting, "pairs": int(len(meta.t1)), "crops": len(meta.names),
              "hr_side": {"hr-lr": "first template of each pair HR, second degraded", "lr-lr": "both degraded", "hr-hr": "both HR"}[setting],
              "pooling": "raw embedding (+ flip) x detector score; mean per media; sum per template; L2; cosine",
              "fars": [f"{f:g}" for f in FARS]},
    )


class IjbProtocol(EvalProtocol):
    """IJB-B/C 1:1 template verification; results keyed by probe size, metrics ``ijbc/SETTING@SIZE:tar@far=F``."""

    options = ("sizes", "setting", "method", "blur", "noise", "jpeg", "seed", "sr", "up_method")
    synthetic_lr = True
    figures = ("roc_per_size",)
    flip_default = True  # insightface scores IJB with the mirrored crop added

    def __init__(self, prefix: str) -> None:
        self.name = prefix
        self.title = title(prefix)
        self.data_dir = prefix.upper()
        self.layout = layout(prefix)
        self.metric_help = f"{prefix}/SETTING@SIZE:tar@far=0.0001 (1e-06 ... 0.1), {prefix}/SETTING@SIZE:auc"

    def check(self, opts: EvalOptions) -> None:
        check_choice(opts.setting, SETTINGS, "--setting")

    def plan(self, root: Path, opts: EvalOptions) -> Plan:
        return plan_ijb(root, self.name, setting=opts.setting, sizes=opts.sizes, input_size=opts.input_size, method=opts.method,
                        blur=opts.blur, noise=opts.noise, jpeg=opts.jpeg, seed=opts.seed, up_method=opts.up_method)

    def output_name(self, opts: EvalOptions) -> str:
        return self.name if opts.setting == "hr-lr" else f"{self.name}-{opts.setting}"

    def sr_refusal(self, opts: EvalOptions) -> str | None:
        return "--setting hr-hr" if opts.setting == "hr-hr" else None

    def record_sizes(self, results: Mapping[str, Any]) -> list[int] | None:
        return sorted(int(k) for k in results)

    def order_results(self, results: Mapping[str, Any]) -> dict[str, Any]:
        return dict(sorted(results.items(), key=lambda kv: int(kv[0])))

    def table(self, doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
        keys = [f"{f:g}" for f in FARS]
        rows = [[f"{k} px", str(r["pairs"]), *(pct(r["tar_at_far"].get(f)) for f in keys), pct(r.get("auc"))] for k, r in doc["results"].items()]
        return ["size", "pairs", *(f"TAR@{far_label(f)} %" for f in FARS), "AUC %"], rows

    def headline(self, doc: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}px TAR@FAR=1e-4 {100 * r['tar_at_far'][HEADLINE_FAR]:.2f}%" for k, r in doc["results"].items())

    def metrics(self, protocol_id: str, setting: str | None, results: Mapping[str, Any]) -> Iterable[MetricRow]:
        for size, r in results.items():
            base = f"{protocol_id}/{setting or 'hr-lr'}@{size}"
            yield from tar_rows(base, r, HEADLINE_FAR)
            yield f"{base}:auc", r.get("auc"), False


IJBB = IjbProtocol("ijbb")
IJBC = IjbProtocol("ijbc")
