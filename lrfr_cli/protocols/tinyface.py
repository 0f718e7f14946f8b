"""TinyFace identification: probes vs gallery (matches + distractors), rank-1/5/10/20/50 and mAP.

Layout (the dataset's own ``Testing_Set``)::

    ROOT/Testing_Set/Probe/<id>_<n>.jpg
    ROOT/Testing_Set/Gallery_Match/<id>_<n>.jpg
    ROOT/Testing_Set/Gallery_Distractor/**/<anything>.jpg     no identity: never a correct match

(ROOT may also be the ``Testing_Set`` folder itself.) The identity is the file name's number
before the first underscore, as in the dataset's own evaluation. The faces are native
low-resolution crops, letterboxed to the input size (longer side scaled, aspect kept, edge-padded:
:func:`sources.letterbox`).

Reported as in the TinyFace paper (Cheng et al., ACCV 2018): the CMC at rank 1, 5, 10, 20, 50
and mAP, the mean over probes of the average precision of the probe's ranking of the whole
gallery, distractors included (:func:`identification.average_precisions`; tied scores count
against the probe, as the ranks do).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LrfrError
from .base import EvalOptions, IdentificationProtocol, Plan

if TYPE_CHECKING:  # numpy and torch load with plan_tinyface, not with the registry (lrfr report needs neither)
    from ..embed import Embeddings

LAYOUT = "ROOT/Testing_Set/{Probe,Gallery_Match}/<id>_<n>.jpg and ROOT/Testing_Set/Gallery_Distractor/"
DISTRACTOR = "__distractor__"
RANKS = (1, 5, 10, 20, 50)


def _label(rel: str) -> str:
    stem = Path(rel).stem
    head = stem.split("_", 1)[0]
    if not head.isdigit():
        raise LrfrError(f"{rel}: TinyFace file names start with the identity number (<id>_<n>.jpg)")
    return str(int(head))


def plan_tinyface(root: Path, input_size: int = 112, distractors: bool = True) -> Plan:
    from ..data.images import list_images
    from ..data.sources import ResizedCrops
    from ..embed import Variant
    from .identification import identify

    base = root / "Testing_Set" if (root / "Testing_Set").is_dir() else root
    probe_dir, match_dir, dis_dir = base / "Probe", base / "Gallery_Match", base / "Gallery_Distractor"
    if not probe_dir.is_dir() or not match_dir.is_dir():
        raise LrfrError(f"TinyFace not found at {root}; expected layout: {LAYOUT} (pass --data ROOT)")
    probes = [p.relative_to(base).as_posix() for p in list_images(probe_dir)]
    matches = [p.relative_to(base).as_posix() for p in list_images(match_dir)]
    if not matches:
        raise LrfrError(f"TinyFace gallery is empty: no images in {match_dir}")
    if not probes:
        raise LrfrError(f"TinyFace: no probe images in {probe_dir}")
    dis: list[str] = []
    if distractors:
        if not dis_dir.is_dir():
            raise LrfrError(f"TinyFace distractors not found at {dis_dir}; expected layout: {LAYOUT} (or --no-distractors)")
        dis = [p.relative_to(base).as_posix() for p in list_images(dis_dir)]
    p_labels = [_label(r) for r in probes]
    g_rels = matches + dis
    g_labels = [_label(r) for r in matches] + [DISTRACTOR] * len(dis)
    hr = Variant(None)

    def score(emb: Embeddings) -> dict[str, Any]:
        res = identify(emb.get(hr, probes), p_labels, emb.get(hr, g_rels), g_labels, max(RANKS), RANKS, mean_ap=True)
        res["distractors"] = len(dis)
        return {"native": res}

    return Plan(
        dataset="tinyface",
        protocol=f"TinyFace identification: {len(probes)} probes vs {len(matches)} gallery + {len(dis)} distractors; rank-1/5/10/20/50 and mAP",
        images=ResizedCrops(root=base, name="tinyface", size=input_size),
        requests={hr: probes + g_rels},
        score=score,
        info={"probes": len(probes), "gallery_match": len(matches), "distractors": len(dis)},
    )


class TinyfaceProtocol(IdentificationProtocol):
    """TinyFace rank-k and mAP; metrics ``tinyface:rankK`` and ``tinyface:map``."""

    name = "tinyface"
    title = "TinyFace"
    layout = LAYOUT
    options = ("distractors",)
    figures = ("cmc",)
    headline_keys = ("rank1", "map")
    metric_help = "tinyface:rank1 (rank5 ... rank50), tinyface:map"

    def plan(self, root: Path, opts: EvalOptions) -> Plan:
        return plan_tinyface(root, input_size=opts.input_size, distractors=opts.distractors)


PROTOCOL = TinyfaceProtocol()
