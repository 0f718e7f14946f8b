"""LFW verification from ``pairs.txt``-format files (View 2's 10 folds, or View 1's single fold).

Settings: ``hr-hr`` (both images as aligned), ``hr-lr`` (the FIRST image of every pair stays HR,
the SECOND is down-sampled to each size and up-sampled back: a HR gallery vs a LR probe),
``lr-lr`` (both degraded to the same size).

Accuracy follows the LFW protocol: per fold, the threshold is chosen on the other folds and
accuracy measured on the held-out one; mean ± std over folds. A file with a single fold (View 1's
``pairsDevTest.txt``) takes its threshold from ``--threshold-pairs`` (by default the sibling
``pairsDevTrain.txt``, the official View-1 training pairs). ROC AUC and TAR@FAR are computed on
all pairs of the file together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LrfrError
from ..registry import check_choice
from .base import EvalOptions, EvalProtocol, MetricRow, Plan, pct, probe_variants, tar_rows

if TYPE_CHECKING:  # numpy and torch load with plan_lfw, not with the registry (lrfr report needs neither)
    from ..embed import Embeddings, ImageSet

SETTINGS = ("hr-hr", "hr-lr", "lr-lr")
LAYOUT = "ROOT/lfw-deepfunneled/<Name>/<Name>_0001.jpg (or ROOT/<Name>/<Name>_0001.jpg) and ROOT/pairs.txt"
FARS = (1e-3,)


@dataclass(frozen=True)
class Pair:
    rel1: str
    rel2: str
    same: bool
    fold: int
    line: int


def image_prefix(root: Path) -> str:
    """``lfw-deepfunneled/`` when ROOT is the dataset folder, ``""`` when it is the image folder."""
    for sub in ("lfw-deepfunneled", "lfw_funneled", "lfw"):
        if (root / sub).is_dir():
            return sub + "/"
    return ""


def _rel(prefix: str, name: str, idx: int) -> str:
    return f"{prefix}{name}/{name}_{idx:04d}.jpg"


def read_pairs(path: Path, prefix: str = "lfw-deepfunneled/") -> tuple[list[Pair], int]:
    """Parse a pairs file; both LFW line formats (``name i j`` and ``name1 i name2 j``), tabs or spaces.

    Header ``F N`` means F folds of N matched then N mismatched pairs; a single number ``N`` (View 1)
    means one fold; no header means one fold. Every malformed line is reported as ``file:line``.
    A line ``path1 path2 0|1`` (explicit image paths relative to the image root, 1 = same person)
    is accepted too, for pairs of images that are not named the LFW way; ``prefix`` is not added
    to those. This is lrfr's one pairs parser: ``lrfr train --val-pairs`` reads through it as well
    (:func:`validation_pairs`).
    """
    path = Path(path)
    if not path.is_file():
        raise LrfrError(f"pairs file {path} does not exist")
    lines = path.read_text(errors="replace").splitlines()
    pairs: list[Pair] = []
    start = 0
    n_folds, per_fold = 1, None
    head = lines[0].split() if lines else []
    if head and all(t.isdigit() for t in head) and len(head) in (1, 2):
        start = 1
        if len(head) == 2:
            n_folds, per_fold = int(head[0]), 2 * int(head[1])
        else:
            per_fold = 2 * int(head[0])
    body = [(i + 1, ln) for i, ln in enumerate(lines) if i >= start and ln.strip() and not ln.startswith("#")]
    for k, (lineno, ln) in enumerate(body):
        t = ln.split()
        try:
            if len(t) == 3 and not t[1].isdigit() and t[2] in ("0", "1"):
                p = Pair(t[0], t[1], t[2] == "1", 0, lineno)
            elif len(t) == 3:
                p = Pair(_rel(prefix, t[0], int(t[1])), _rel(prefix, t[0], int(t[2])), True, 0, lineno)
            elif len(t) == 4:
                p = Pair(_rel(prefix, t[0], int(t[1])), _rel(prefix, t[2], int(t[3])), t[0] == t[2], 0, lineno)
            else:
                raise ValueError
        except ValueError:
            raise LrfrError(
                f"{path}:{lineno}: expected 'name i j' (same person), 'name1 i name2 j' (different people) "
                f"or 'path1 path2 0|1', got {ln.strip()!r}"
            ) from None
        fold = k // per_fold if per_fold else 0
        pairs.append(Pair(p.rel1, p.rel2, p.same, fold, lineno))
    if not pairs:
        raise LrfrError(f"{path}: no pairs found")
    if per_fold and len(pairs) != n_folds * per_fold:
        raise LrfrError(f"{path}: header promises {n_folds} fold(s) of {per_fold} pairs, found {len(pairs)} pairs")
    return pairs, n_folds


def validation_pairs(pairs_file: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> list[tuple[Path, Path, bool]]:
    """Image paths of every pair, for ``lrfr train --val-pairs``: ``(image 1, image 2, same)``.

    ``root`` defaults to ``lfw-deepfunneled/`` beside the file, else the file's folder; a dataset
    folder holding ``lfw-deepfunneled/`` works too (:func:`image_prefix`). LFW-named images are
    also found as ``.png``/``.jpeg`` (an aligned copy written as PNG). A missing image is an error
    naming the pairs file's line, before any training starts.
    """
    pf = Path(pairs_file)
    if root is None:
        root = pf.parent / "lfw-deepfunneled" if (pf.parent / "lfw-deepfunneled").is_dir() else pf.parent
    root = Path(root)
    pairs, _ = read_pairs(pf, image_prefix(root))

    def find(rel: str) -> Path:
        p = root / rel
        if not p.is_file() and p.suffix == ".jpg":
            for ext in (".png", ".jpeg"):
                if p.with_suffix(ext).is_file():
                    return p.with_suffix(ext)
        return p

    out = [(find(p.rel1), find(p.rel2), p.same) for p in pairs]
    missing = [(pr.line, img) for pr, (a, b, _) in zip(pairs, out) for img in (a, b) if not img.is_file()]
    if missing:
        line, img = missing[0]
        raise LrfrError(f"{pf}:{line}: image {img} not found ({len(missing)} missing in all; set --val-root to the image folder)")
    return out


def check_images(root: Path, pairs: list[Pair], path: Path) -> None:
    for p in pairs:
        for rel in (p.rel1, p.rel2):
            if not (root / rel).is_file():
                raise LrfrError(f"{path}:{p.line}: image {rel} not found under {root} (expected layout {LAYOUT})")


def default_threshold_pairs(pairs_file: Path) -> Path | None:
    cand = pairs_file.with_name(pairs_file.name.replace("DevTest", "DevTrain"))
    return cand if cand != pairs_file and cand.is_file() else None


def verification_result(sc: Any, y: Any, kf: Any, fars: tuple[float, ...] = FARS) -> dict[str, Any]:
    """One size's numbers from pair scores ``sc``, labels ``y`` and the fold accuracy ``kf``
    (a :class:`~lrfr_cli.metrics.KFoldResult`): what LFW and the ``.bin`` packs record."""
    from .. import metrics as M

    return dict(
        accuracy=kf.accuracy,
        accuracy_std=kf.std,
        fold_accuracies=kf.fold_accuracies,
        thresholds=kf.thresholds,
        auc=M.roc_auc(sc, y),
        tar_at_far={f"{f:g}": v for f, v in M.tar_at_far(sc, y, list(fars)).items()},
        roc=M.compact_roc(*M.roc_curve(sc, y)[:2]),  # <= 200 points, for `lrfr report`'s ROC plots
        mean_genuine=float(sc[y].mean()) if y.any() else None,
        mean_impostor=float(sc[~y].mean()) if (~y).any() else None,
    )


def plan_lfw(
    images: ImageSet,
    root: Path,
    pairs_file: Path,
    *,
    setting: str,
    sizes: list[int],
    input_size: int,
    method: str,
    blur: float = 0.0,
    noise: float = 0.0,
    jpeg: int | None = None,
    seed: int = 0,
    threshold_pairs: Path | None = None,
    up_method: str = "bicubic",
) -> Plan:
    import numpy as np

    from .. import metrics as M
    from ..embed import Variant
    from . import quality as Q

    check_choice(setting, SETTINGS, "--setting")
    too_big = [s for s in sizes if s > input_size]
    if too_big:
        raise LrfrError(f"--sizes: {too_big[0]} px is larger than the {input_size} px network input ({input_size} = HR)")
    prefix = image_prefix(root)
    pairs, n_folds = read_pairs(pairs_file, prefix)
    check_images(root, pairs, pairs_file)
    thr_pairs: list[Pair] = []
    if n_folds == 1:
        threshold_pairs = threshold_pairs or default_threshold_pairs(pairs_file)
        if threshold_pairs is not None:
            thr_pairs, _ = read_pairs(threshold_pairs, prefix)
            check_images(root, thr_pairs, threshold_pairs)
    sizes, variants, sides = probe_variants(setting, sizes, input_size, method, blur=blur, noise=noise, jpeg=jpeg, seed=seed,
                                            up_method=up_method)

    requests: dict[Variant, list[str]] = {}
    everything = pairs + thr_pairs
    for s in sizes:
        a, b = sides(variants[s])
        requests.setdefault(a, []).extend(p.rel1 for p in everything)
        requests.setdefault(b, []).extend(p.rel2 for p in everything)
    requests = {v: list(dict.fromkeys(r)) for v, r in requests.items()}

    if n_folds > 1:
        how = f"{n_folds}-fold: threshold chosen on {n_folds - 1} folds, accuracy on the held-out fold"
    elif thr_pairs:
        how = f"threshold chosen on {threshold_pairs.name} ({len(thr_pairs)} pairs), accuracy on {pairs_file.name}"
    else:
        how = "no threshold pairs: 10-fold cross-validation within the file (interleaved folds)"

    def score(emb: Embeddings) -> dict[str, Any]:
        out: dict[str, Any] = {}
        y = np.array([p.same for p in pairs])
        for s in sizes:
            a, b = sides(variants[s])
            sc = M.pair_cosine(emb.get(a, [p.rel1 for p in pairs]), emb.get(b, [p.rel2 for p in pairs]))
            res: dict[str, Any] = {"size": s, "variant": variants[s].describe(), "pairs": len(pairs)}
            if n_folds > 1:
                folds = np.array([p.fold for p in pairs])
                kf = M.kfold_accuracy(sc, y, folds)
            elif thr_pairs:
                ty = np.array([p.same for p in thr_pairs])
                ts = M.pair_cosine(emb.get(a, [p.rel1 for p in thr_pairs]), emb.get(b, [p.rel2 for p in thr_pairs]))
                t, _ = M.best_threshold(ts, ty)
                folds = np.zeros(len(pairs), dtype=int)
                kf = M.KFoldResult(M.accuracy_at(sc, y, t), 0.0, [M.accuracy_at(sc, y, t)], [t])
            else:
                folds = np.arange(len(pairs)) % 10
                kf = M.kfold_accuracy(sc, y, folds)
            # each pair judged at its own fold's threshold, for accuracy by quality bin
            fold_ids = np.unique(folds)
            thr = np.asarray(kf.thresholds)[np.searchsorted(fold_ids, folds)]
            correct = (sc >= thr) == y
            qb = emb.quality(b, [p.rel2 for p in pairs])
            qa = None if setting == "hr-lr" else emb.quality(a, [p.rel1 for p in pairs])
            res["quality_bins"] = Q.pair_quality_bins(qa, qb, correct)
            res.update(verification_result(sc, y, kf))
            out[str(s)] = res
        return out

    return Plan(
        dataset="lfw",
        protocol=f"LFW pairs {pairs_file.name} ({len(pairs)} pairs: {int(sum(p.same for p in pairs))} same), {setting}; {how}",
        images=images,
        requests=requests,
        score=score,
        info={
            "pairs_file": str(pairs_file),
            "threshold_pairs": str(threshold_pairs) if thr_pairs else None,
            "folds": n_folds,
            "setting": setting,
            "hr_side": {"hr-lr": "first image of each pair HR, second degraded", "lr-lr": "both degraded", "hr-hr": "both HR"}[setting],
        },
    )


LANDMARK_ALIGNS = ("landmarks", "seed-landmarks")
DEFAULT_LANDMARKS = Path("protocols") / "lfw_landmarks" / "LFW.csv"  # under $LRFR_DATA


def read_lfw_landmarks(path: Path) -> dict[str, Any]:
    """``Name/Name_0001.jpg`` → 5x2 points, from ``path,x1,y1,...,x5,y5`` (the Deep Siamese seed's
    ``LFW.csv``) or the same fields separated by tabs/spaces (its ``lfw_landmark.txt``)."""
    import numpy as np

    if not path.is_file():
        raise LrfrError(f"landmark file {path} does not exist (pass --landmarks FILE: 'Name/Name_0001.jpg,x1,y1,...,x5,y5' lines)")
    out: dict[str, Any] = {}
    for i, ln in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not ln.strip():
            continue
        t = [x.strip() for x in ln.split(",")] if "," in ln else ln.split()
        try:
            if len(t) != 11:
                raise ValueError
            pts = np.array([float(v) for v in t[1:]], dtype=np.float64).reshape(5, 2)
        except ValueError:
            raise LrfrError(f"{path}:{i}: expected 'Name/Name_0001.jpg,x1,y1,...,x5,y5' (11 fields), got {ln.strip()[:80]!r}") from None
        out["/".join(Path(t[0]).parts[-2:])] = pts
    if not out:
        raise LrfrError(f"{path}: no landmarks found")
    return out


def seed_template(size: int) -> Any:
    """The Deep Siamese seed's template: the 96x112 (SphereFace) points scaled by ``size``/112 into
    a ``size``-square crop, so its faces sit 8·size/112 px left of the ArcFace crop's centre."""
    from ..align.warp import ARCFACE_TEMPLATE

    return (ARCFACE_TEMPLATE - [8.0, 0.0]) * (size / 112.0)


@dataclass
class LfwLandmarks:
    """LFW faces warped with 5 points from a landmark file (``eval --align landmarks|seed-landmarks``).

    ``landmarks``: lrfr's warp (ArcFace template, bilinear, reflected border, area pre-shrink),
    as SCface's lists are aligned. ``seed-landmarks``: the Deep Siamese seed's own crop (its
    template, :func:`seed_template`; bicubic; black border). Images the file does not list
    use ``fallback`` (the centre-crop warp), named in the eval record.
    """

    root: Path
    landmarks: dict[str, Any]
    name: str
    size: int = 112
    style: str = "landmarks"
    source: str = ""
    fallback_rels: frozenset[str] = field(default_factory=frozenset)
    fallback: Any = None

    def describe(self) -> dict[str, Any]:
        how = ("5-point landmarks, lrfr similarity warp to the ArcFace template" if self.style == "landmarks" else
               "5-point landmarks, Deep Siamese seed warp (96x112 template scaled to the input, bicubic, black border)")
        d: dict[str, Any] = {"root": str(self.root), "align": f"{how} ({self.source})", "size": self.size}
        if self.fallback is not None:
            d["fallback"] = self.fallback.describe()
        return d

    def key(self, rel: str) -> str:
        return "/".join(Path(rel).parts[-2:])

    def load(self, rel: str) -> Any:
        import cv2

        from ..align.warp import umeyama
        from ..data.images import load_rgb
        from ..data.sources import warp_antialiased

        lm = self.landmarks.get(self.key(rel))
        if lm is None:
            return self.fallback.load(rel)
        img = load_rgb(self.root / rel)
        if self.style == "landmarks":
            return warp_antialiased(img, lm, self.size)
        m = umeyama(lm, seed_template(self.size))
        return cv2.warpAffine(img, m, (self.size, self.size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def landmark_images(root: Path, style: str, path: Path, rels: list[str], center: Any, size: int) -> tuple[LfwLandmarks, dict[str, Any]]:
    """The image set for ``--align landmarks|seed-landmarks`` and what the eval record says about it."""
    import hashlib

    lms = read_lfw_landmarks(path)
    missing = frozenset(r for r in rels if "/".join(Path(r).parts[-2:]) not in lms)
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    images = LfwLandmarks(root=root, landmarks=lms, name=f"lfw-{style}-{digest[:10]}", size=size, style=style,
                          source=f"{path.name} sha1 {digest[:12]}", fallback_rels=missing, fallback=center)
    info = {"align": style, "landmark_file": str(path), "landmark_sha1": digest, "landmark_missing": len(missing),
            "landmark_missing_examples": sorted(missing)[:20], "fallback": "center-crop"}
    if image_prefix(root) == "lfw-deepfunneled/":
        info["note"] = ("landmark files such as the seed's LFW.csv were measured on the original lfw.tgz images; "
                        "on the deep-funneled ones they do not line up exactly")
    return images, info


class LfwProtocol(EvalProtocol):
    """LFW verification; results keyed by probe size, metrics ``lfw[-PAIRS]/SETTING@SIZE``."""

    name = "lfw"
    title = "LFW"
    layout = LAYOUT
    options = ("sizes", "setting", "pairs", "threshold_pairs", "align", "landmarks", "method", "up_method", "blur", "noise", "jpeg", "seed", "sr")
    synthetic_lr = True
    figures = ("accuracy_vs_size", "roc_per_size")
    metric_help = ("lfw/SETTING@SIZE (accuracy; lfw-PAIRS/... for another pairs file, e.g. lfw-pairsDevTest/hr-lr@16), "
                   "lfw/SETTING@SIZE:auc, lfw/SETTING@SIZE:tar@far=0.001")

    def check(self, opts: EvalOptions) -> None:
        check_choice(opts.setting, SETTINGS, "--setting")

    def plan(self, root: Path, opts: EvalOptions) -> Plan:
        if not root.is_dir():
            raise LrfrError(f"LFW not found at {root}; expected layout: ROOT/lfw-deepfunneled/<Name>/<Name>_0001.jpg and ROOT/pairs.txt (pass --data ROOT)")
        from ..data.sources import LfwCenterCrop

        pairs_file = opts.pairs if opts.pairs is not None else root / "pairs.txt"
        # the centre-crop warp stands in until eval has chosen the alignment (--align)
        return plan_lfw(LfwCenterCrop(root, size=opts.input_size), root, pairs_file, setting=opts.setting, sizes=opts.sizes,
                        input_size=opts.input_size, method=opts.method, blur=opts.blur, noise=opts.noise,
                        jpeg=opts.jpeg, seed=opts.seed, threshold_pairs=opts.threshold_pairs, up_method=opts.up_method)

    def output_name(self, opts: EvalOptions) -> str:
        name = self.name
        if opts.pairs is not None and opts.pairs.name != "pairs.txt":
            name += "-" + opts.pairs.stem
        if opts.setting != "hr-lr":
            name += "-" + opts.setting
        return name

    def sr_refusal(self, opts: EvalOptions) -> str | None:
        return "--setting hr-hr" if opts.setting == "hr-hr" else None

    def model_warning(self, plan: Plan, model_config: Mapping[str, Any]) -> str | None:
        if plan.info["folds"] > 1 and "lfw" in json.dumps(model_config.get("data", "")).lower():
            return ("this run was trained on LFW images: View 2 shares its identities; score it on View 1 "
                    "(--pairs $LRFR_DATA/lfw/pairsDevTest.txt) with a model trained on peopleDevTrain.txt identities")
        return None

    def record_sizes(self, results: Mapping[str, Any]) -> list[int] | None:
        return sorted(int(k) for k in results)

    def order_results(self, results: Mapping[str, Any]) -> dict[str, Any]:
        return dict(sorted(results.items(), key=lambda kv: int(kv[0])))

    def table(self, doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
        rows = [[f"{k} px", pct(r["accuracy"]), pct(r["accuracy_std"]), pct(r["auc"]), pct(r["tar_at_far"].get("0.001"))]
                for k, r in doc["results"].items()]
        return ["size", "accuracy %", "± std", "AUC %", "TAR@FAR=1e-3 %"], rows

    def headline(self, doc: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}px {100 * r['accuracy']:.2f}%" for k, r in doc["results"].items())

    def protocol_id(self, doc: Mapping[str, Any]) -> str:
        """``lfw`` for View 2's pairs.txt, ``lfw-<pairs file stem>`` for any other pairs file."""
        pairs = (doc.get("protocol_info") or {}).get("pairs_file")
        stem = Path(str(pairs)).stem if pairs else "pairs"
        return "lfw" if stem == "pairs" else f"lfw-{stem}"

    def metrics(self, protocol_id: str, setting: str | None, results: Mapping[str, Any]) -> Iterable[MetricRow]:
        for size, r in results.items():
            base = f"{protocol_id}/{setting or 'hr-lr'}@{size}"
            yield base, r.get("accuracy"), True
            yield f"{base}:auc", r.get("auc"), False
            yield from tar_rows(base, r)


PROTOCOL = LfwProtocol()
