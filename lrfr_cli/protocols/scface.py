"""SCface identification: HR mugshot gallery vs surveillance probes (cameras 1-5) per distance.

Reads the dataset's own layout and naming::

    ROOT/mugshot_frontal_original_all/<id>_frontal.jpg        gallery (130 subjects)
    ROOT/surveillance_cameras_all/<id>_cam<k>_<d>.jpg          probes, camera k=1..5, distance d=1..3

and aligns every face with the 5-point landmark lists of the Deep Siamese protocol
(``scface_mugshot.csv``, ``scface_distance{1,2,3}.csv``: ``path,x1,y1,...,x5,y5``) through the
same similarity warp as ``lrfr align``, so rank-1 is comparable with that paper. Distances:
1 = 4.20 m (smallest faces), 2 = 2.60 m, 3 = 1.00 m.

A mugshot that ties the true one counts against the probe (see
:func:`lrfr_cli.metrics.true_match_ranks`; noted as ``rank_ties`` in the eval JSON).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LrfrError
from .base import EvalOptions, IdentificationProtocol, Plan

if TYPE_CHECKING:  # numpy and torch load with plan_scface, not with the registry (lrfr report needs neither)
    import numpy as np

    from ..embed import Embeddings

DISTANCES = (1, 2, 3)
DISTANCE_METRES = {1: 4.20, 2: 2.60, 3: 1.00}
GALLERY_DIR = "mugshot_frontal_original_all"
PROBE_DIR = "surveillance_cameras_all"
LAYOUT = f"ROOT/{GALLERY_DIR}/<id>_frontal.jpg and ROOT/{PROBE_DIR}/<id>_cam<1-5>_<1-3>.jpg"
_GALLERY_RE = re.compile(r"^(\d+)_frontal$", re.IGNORECASE)
_PROBE_RE = re.compile(r"^(\d+)_cam(\d+)_(\d+)$", re.IGNORECASE)


def parse_distances(text: str) -> list[int]:
    t = str(text).strip().lower()
    if t == "all":
        return list(DISTANCES)
    out = []
    for part in t.split(","):
        part = part.strip()
        if part not in {"1", "2", "3"}:
            raise LrfrError(f"--distance {text}: SCface has distances 1 (4.20 m), 2 (2.60 m), 3 (1.00 m) or 'all'")
        out.append(int(part))
    return sorted(set(out))


def read_landmarks(path: Path) -> list[tuple[str, np.ndarray, int]]:
    """``(relative path, 5x2 points, line)`` rows of a landmark CSV; malformed → ``file:line``."""
    import numpy as np

    if not path.is_file():
        raise LrfrError(f"landmark list {path} does not exist (pass --landmarks DIR holding scface_mugshot.csv, scface_distance1..3.csv)")
    rows = []
    for i, ln in enumerate(path.read_text().splitlines(), 1):
        if not ln.strip():
            continue
        t = [x.strip() for x in ln.split(",")]
        try:
            if len(t) != 11:
                raise ValueError
            pts = np.array([float(v) for v in t[1:]], dtype=np.float64).reshape(5, 2)
        except ValueError:
            raise LrfrError(f"{path}:{i}: expected 'path,x1,y1,...,x5,y5' (11 fields), got {ln.strip()[:80]!r}") from None
        rows.append((t[0], pts, i))
    return rows


def _index(folder: Path) -> dict[str, str]:
    """lower-case file stem → file name, so ``001_frontal.JPG`` matches a list's ``001_frontal.jpg``."""
    from ..data.images import IMAGE_EXTS

    if not folder.is_dir():
        return {}
    return {p.stem.lower(): p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")}


def plan_scface(root: Path, landmarks_dir: Path, distances: list[int], input_size: int = 112) -> Plan:
    import numpy as np

    from .. import metrics as M
    from ..data.sources import LandmarkWarp
    from ..embed import Variant
    from .identification import identify

    if not (root / GALLERY_DIR).is_dir() or not (root / PROBE_DIR).is_dir():
        raise LrfrError(f"SCface not found at {root}; expected layout: {LAYOUT} (pass --data ROOT)")
    gal_index = _index(root / GALLERY_DIR)
    if not any(_GALLERY_RE.match(s) for s in gal_index):
        raise LrfrError(f"SCface gallery is empty: no <id>_frontal.* images in {root / GALLERY_DIR}")
    probe_index = _index(root / PROBE_DIR)
    landmarks: dict[str, np.ndarray] = {}

    def resolve(rows: list[tuple[str, np.ndarray, int]], csv: Path, index: dict[str, str], sub: str) -> list[str]:
        out, missing = [], []
        for rel, pts, line in rows:
            name = index.get(Path(rel).stem.lower())
            if name is None:
                missing.append(f"{csv.name}:{line} {rel}")
                continue
            r = f"{sub}/{name}"
            landmarks[r] = pts
            out.append(r)
        if missing:
            raise LrfrError(f"{len(missing)} image(s) listed in {csv.name} are missing under {root}, e.g. {missing[0]}; expected layout: {LAYOUT}")
        return out

    gcsv = landmarks_dir / "scface_mugshot.csv"
    gallery = resolve(read_landmarks(gcsv), gcsv, gal_index, GALLERY_DIR)
    if not gallery:
        raise LrfrError(f"SCface gallery is empty: {gcsv} lists no images")
    g_labels = [_GALLERY_RE.match(Path(r).stem).group(1) if _GALLERY_RE.match(Path(r).stem) else None for r in gallery]
    if None in g_labels:
        bad = gallery[g_labels.index(None)]
        raise LrfrError(f"{bad}: gallery file names must look like <id>_frontal.jpg")
    probes: dict[int, list[tuple[str, str, int]]] = {}
    for d in distances:
        csv = landmarks_dir / f"scface_distance{d}.csv"
        items = []
        for r in resolve(read_landmarks(csv), csv, probe_index, PROBE_DIR):
            m = _PROBE_RE.match(Path(r).stem)
            if not m:
                raise LrfrError(f"{r}: probe file names must look like <id>_cam<k>_<d>.jpg")
            if int(m.group(3)) != d:
                raise LrfrError(f"{csv.name}: lists {r}, which is not a distance-{d} image")
            if 1 <= int(m.group(2)) <= 5:
                items.append((r, m.group(1), int(m.group(2))))
        if not items:
            raise LrfrError(f"SCface distance {d}: no probe images (cameras 1-5) in {csv.name}")
        probes[d] = items

    images = LandmarkWarp(root=root, landmarks=landmarks, name="scface", size=input_size, source=str(landmarks_dir))
    hr = Variant(None)
    requests = {hr: gallery + [r for d in distances for r, _, _ in probes[d]]}

    def score(emb: Embeddings) -> dict[str, Any]:
        g = emb.get(hr, gallery)
        out: dict[str, Any] = {}
        for d in distances:
            rels = [r for r, _, _ in probes[d]]
            pe = emb.get(hr, rels)
            res = identify(pe, [l for _, l, _ in probes[d]], g, g_labels)
            cams = np.array([c for _, _, c in probes[d]])
            per_cam = {}
            for c in sorted(set(cams.tolist())):
                sel = cams == c
                per_cam[f"cam{c}"] = identify(pe[sel], [probes[d][i][1] for i in np.nonzero(sel)[0]], g, g_labels, 1, (1,))["rank1"]
            res.update(distance=d, metres=DISTANCE_METRES[d], rank1_per_camera=per_cam)
            out[f"d{d}"] = res
        return out

    return Plan(
        dataset="scface",
        protocol=f"SCface: {len(gallery)} HR mugshots vs cameras 1-5 at distance(s) {','.join(map(str, distances))}; rank-1 / CMC",
        images=images,
        requests=requests,
        score=score,
        info={"landmarks": str(landmarks_dir), "distances": distances, "gallery": len(gallery), "rank_ties": M.TIES_NOTE},
    )


class ScfaceProtocol(IdentificationProtocol):
    """SCface rank-k per distance; metrics ``scface/dN:rankK``."""

    name = "scface"
    title = "SCface"
    layout = LAYOUT
    options = ("distance", "landmarks")
    figures = ("cmc",)
    metric_help = "scface/dN:rank1 (rank5, rank10, rank20)"

    def check(self, opts: EvalOptions) -> None:
        parse_distances(opts.distance)

    def plan(self, root: Path, opts: EvalOptions) -> Plan:
        lm_dir = opts.landmarks or Path(os.environ.get("LRFR_DATA", "data")).expanduser() / "protocols" / "scface"
        return plan_scface(root, lm_dir, parse_distances(opts.distance), input_size=opts.input_size)


PROTOCOL = ScfaceProtocol()
