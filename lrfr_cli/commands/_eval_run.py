"""The steps of one ``lrfr eval`` record, in the order the command takes them.

Options checked (:func:`check_choices`, :func:`eval_options`), the protocol planned and the model
loaded (:func:`prepare`; the plan first, so bad data fails before a model loads), the faces aligned
as the training faces were (:func:`align_faces`), embedded once into the cache
(:func:`embed_faces`), and the scores written as ``evals/RUN/NAME.json`` (:func:`write_record`).
Kept apart from ``eval.py`` so the command reads as these steps and its options.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..data.degrade import parse_sizes
from ..data.filters import METHODS, UP_METHODS
from ..data.sources import AlignedFolder
from ..embed import EmbeddingCache, Embeddings, EmbedStats, LoadedModel, embed, pending, resolve_model
from ..embed.extract import with_sr
from ..embed.model import choose_backend
from ..errors import LrfrError
from ..progress import null_progress
from ..protocols import EvalOptions, EvalProtocol, Plan
from ..protocols.quality import face_quality
from ..protocols.quality import write_csv as write_quality_csv
from ..registry import check_choice
from ..results import EvalRecord, ResultsError
from ..workspace import Workspace, git_commit, package_versions

if TYPE_CHECKING:
    import torch

QUALITY_HELP = ("feature_norm: norm of the raw embedding (AdaFace's quality proxy); laplacian_variance / "
                "laplacian_mean_abs: sharpness of the grey face as the network saw it (Approach2's measure)")
ALIGNS = ("mtcnn", "center-crop", "none", "landmarks", "seed-landmarks")


def check_choices(method: str, up_method: str, align: str) -> None:
    """The options with a fixed set of values, each with the one-line error that lists them."""
    check_choice(method, METHODS, "--down-method")
    check_choice(up_method, UP_METHODS, "--up-method")
    check_choice(align, ALIGNS, "--align")


def eval_options(proto: EvalProtocol, args: Mapping[str, Any]) -> EvalOptions:
    """The protocol options from the command's ``args`` (by option name), checked by ``proto``.

    Planned first at 112 (or the largest size asked for: a 128-px network's HR); :func:`prepare`
    re-plans at the model's own input size once it is loaded, so bad data still fails before the
    model loads."""
    size_list = parse_sizes(args["sizes"])
    opts = EvalOptions(sizes=size_list, setting=args["setting"], pairs=args["pairs"], threshold_pairs=args["threshold_pairs"],
                       distance=args["distance"], landmarks=args["landmarks"], distractors=args["distractors"],
                       method=args["down_method"], blur=args["blur"], noise=args["noise"], jpeg=args["jpeg"], seed=args["seed"],
                       input_size=max(112, *size_list), up_method=args["up_method"], bin_channels=args["bin_channels"])
    proto.check(opts)
    return opts


def data_root(proto: EvalProtocol, data: Optional[Path], ws_root: Path) -> Path:
    """``--data`` (a workspace artifact such as aligned/NAME when relative to the workspace), else
    the protocol's folder under ``$LRFR_DATA``."""
    if data is not None:
        data = data.expanduser()
        if not data.exists() and not data.is_absolute() and (ws_root / data).exists():
            return ws_root / data  # a workspace artifact such as aligned/NAME
        return data
    base = Path(os.environ.get("LRFR_DATA", "data")).expanduser()
    return proto.default_root(base)


@dataclasses.dataclass
class Setup:
    """One eval's protocol planned for its loaded model: what the later steps and the record read."""

    proto: EvalProtocol
    root: Path
    opts: EvalOptions  # at the model's input size
    plan: Plan
    loaded: LoadedModel
    dev: torch.device
    prec: str
    flip: bool
    sr_info: dict[str, Any]  # the record's super_resolution block
    sr_run: Any  # the SR front (an SRFront) with --sr runs/SRRUN, else None
    sr_aliases: dict[Any, Any]  # super-resolved variant -> the variant it was made from

    @property
    def cache_id(self) -> str:
        return self.loaded.cache_id + ("" if self.prec == "fp32" else f"-{self.prec}")


def prepare(proto: EvalProtocol, root: Path, opts: EvalOptions, *, model: str, sr: str, backend: str, dev: torch.device,
            prec: str, flip: bool, ws_root: Path, st: Any, **model_opts: Any) -> Setup:
    """Plan the protocol, check ``--sr``, load the model (``model_opts``: backbone, checkpoint and
    the ONNX input contract) and, for a network with another input size (the Deep Siamese seed's
    128 px), plan again with faces made at its size."""
    plan = proto.plan(root, opts)  # protocol first: bad data should fail before a model is loaded
    sr_info, sr_run = super_resolution(sr, proto, opts, ws_root, st)
    sr_aliases = _with_sr(plan, sr_run)
    backend = choose_backend(backend, model, dev.type)
    if backend == "onnxruntime" and prec != "fp32":
        raise LrfrError(f"--precision {prec}: the onnxruntime backend runs the graph in fp32; drop --precision or pass --backend torch")
    loaded = resolve_model(model, ws_root, **model_opts, backend=backend, device=str(dev), onnx_cache=ws_root / "cache" / "onnx")
    if loaded.input_size != opts.input_size:
        opts = dataclasses.replace(opts, input_size=loaded.input_size)
        plan = proto.plan(root, opts)
        sr_aliases = _with_sr(plan, sr_run)
    return Setup(proto=proto, root=root, opts=opts, plan=plan, loaded=loaded, dev=dev, prec=prec, flip=flip,
                 sr_info=sr_info, sr_run=sr_run, sr_aliases=sr_aliases)


def _with_sr(plan: Plan, sr_run: Any) -> dict[Any, Any]:
    """Route the plan's degraded requests through the SR front; its aliases (none without one)."""
    if sr_run is None:
        return {}
    plan.requests, aliases = with_sr(plan.requests, sr_run)
    return aliases


def super_resolution(sr: str, proto: EvalProtocol, opts: EvalOptions, ws_root: Path, st: Any) -> tuple[dict[str, Any], Any]:
    """``--sr``: the record's ``super_resolution`` block and, for an SR run, its front end (one-line
    errors for a recogniser given as --sr, a protocol without synthetic LR probes)."""
    if sr.strip().lower() == "bicubic":
        return {"method": "bicubic", "note": "LR probes up-sampled back to the input size by bicubic interpolation only"}, None
    what = proto.sr_refusal(opts)
    if what is not None:
        raise LrfrError(f"--sr {sr}: super-resolution applies to LFW's degraded probes (--setting hr-lr or lr-lr), not to {what}")
    from ..sr.infer import SRFront, load_sr_run

    srm = load_sr_run(sr, ws_root)
    outside = srm.sizes_outside_training(opts.sizes)
    if outside:
        st.warn(f"--sr runs/{srm.name} was trained at {','.join(map(str, srm.sizes))} px; "
                f"also applying it at {','.join(map(str, outside))} px (recorded as sizes_outside_training)")
    return {**srm.describe(), "sizes_outside_training": outside}, SRFront(srm.tag, srm.module)


@dataclasses.dataclass
class Clock:
    """When the eval began, how long alignment took, and when embedding and scoring ended: the
    record's ``timings``."""

    start: float
    align_s: float = 0.0
    embedded: float = 0.0
    scored: float = 0.0

    def timings(self, stats: EmbedStats) -> dict[str, Any]:
        return {"load_and_align_s": round(self.embedded - self.start - stats.seconds, 3), "align_s": round(self.align_s, 3),
                "embed_s": round(stats.seconds, 3), "score_s": round(self.scored - self.embedded, 3),
                "total_s": round(time.time() - self.start, 3),
                "images_per_s": round(stats.forward_images / stats.seconds, 2) if stats.seconds > 0 and stats.forward_images else None}


def align_faces(setup: Setup, align: str, ws: Workspace, *, workers: int, landmarks: Optional[Path], clock: Clock, st: Any) -> dict[str, Any]:
    """For protocols of photos (``--align``), swap the plan's images for faces aligned as the
    training faces were; the record's ``images`` block either way."""
    t_align = time.time()
    images_info: dict[str, Any] = {}
    plan = setup.plan
    if "align" in setup.proto.options:
        all_rels = list(dict.fromkeys(r for rels in plan.requests.values() for r in rels))
        plan.images, images_info = aligned_images(setup.proto, plan.images, setup.root, align, all_rels, ws, device=str(setup.dev),
                                                  workers=workers, st=st, size=setup.opts.input_size, landmarks=landmarks)
    images_info = {**plan.images.describe(), **images_info}
    clock.align_s = time.time() - t_align
    return images_info


def aligned_images(proto: EvalProtocol, center: Any, root: Path, align: str, rels: list[str], ws: Workspace, device: str,
                   workers: int, st: Any, size: int = 112, landmarks: Optional[Path] = None) -> tuple[Any, dict[str, Any]]:
    """A photo protocol's faces as the network will see them, aligned as the training faces were
    (``center``: the plan's fixed-warp image set, also the fallback where MTCNN finds no face),
    at the model's input ``size`` (aligned at 112, then resized, except the landmark warps)."""
    if align == "center-crop":
        return center, {"align": "center-crop", "note": "fixed similarity warp of the deep-funneled image (median MTCNN landmarks) to the ArcFace template"}
    if align == "none":
        return AlignedFolder(root=root, name=f"{proto.name}-prealigned-" + hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10], size=size, how="none (images already aligned; resized to the input size if needed)"), {"align": "none"}
    if align in ("landmarks", "seed-landmarks"):
        from ..protocols.lfw import DEFAULT_LANDMARKS, landmark_images

        path = landmarks if landmarks is not None else Path(os.environ.get("LRFR_DATA", "data")).expanduser() / DEFAULT_LANDMARKS
        images, info = landmark_images(root, align, path.expanduser(), rels, center, size)
        if info["landmark_missing"]:
            st.warn(f"{path.name} has no landmarks for {info['landmark_missing']} of {len(rels)} {proto.title} images; those use the center-crop warp")
        if info.get("note"):
            st.info(info["note"])
        return images, info
    try:
        from ..align.pipeline import align_tree
    except ImportError as e:  # pragma: no cover - the aligner ships with lrfr
        raise LrfrError(f"MTCNN alignment is unavailable ({e}); use --align center-crop") from e
    art = ws.artifact("aligned", f"{proto.name}-mtcnn")
    with art.lock():
        with st.progress(f"align {proto.title} (MTCNN)", total=len(rels)) as progress:
            res = align_tree(root, art.path, rels, size=112, select="center", device=device, workers=workers, progress=progress)
    failed = frozenset(r for r, _ in res.failures)
    if failed:
        st.warn(f"MTCNN found no face in {len(failed)} of {len(rels)} {proto.title} images; those use the center-crop warp")
    images = AlignedFolder(root=art.path, name=f"{proto.name}-mtcnn", size=size, fallback_rels=failed, fallback=center,
                           how="mtcnn (lrfr align recipe: MTCNN 5 points + Umeyama to the ArcFace template, face nearest the centre)")
    return images, {"align": "mtcnn", "aligned_set": str(art.path), "mtcnn_failures": len(failed),
                    "mtcnn_failure_examples": sorted(failed)[:20], "fallback": "center-crop"}


def embed_faces(setup: Setup, ws: Workspace, *, batch_size: int, workers: int, force: bool,
                st: Any) -> tuple[Embeddings, EmbedStats, EmbeddingCache]:
    """Every (image, variant) the plan requests, embedded once per model into the workspace's
    cache (``force``: recomputed); a progress bar only when something is left to compute."""
    loaded, plan = setup.loaded, setup.plan
    cache = EmbeddingCache(ws, setup.cache_id, plan.images.name,
                           {"images": plan.images.describe(), "model_sha1": loaded.sha1, "precision": setup.prec,
                            "channel_order": loaded.channel_order, "backend": loaded.backend,
                            **({"input_contract": loaded.contract} if loaded.contract else {})}, refresh=force)
    with cache.artifact.lock():
        todo = pending(plan.requests, cache, setup.flip)
        bar = st.progress(f"embed {plan.dataset} ({len(plan.requests)} variant(s))", total=todo) if todo else contextlib.nullcontext(null_progress)
        with bar as progress:
            emb, stats = embed(loaded, plan.images, plan.requests, cache, flip=setup.flip, device=setup.dev, precision=setup.prec,
                               batch_size=batch_size, workers=workers, progress=progress)
    emb.aliases = setup.sr_aliases
    return emb, stats, cache


def output_name(setup: Setup, name: Optional[str]) -> str:
    """``--name``, else the data's name (a .bin file) or the protocol's, with ``-sr-RUN`` for SR probes."""
    return name or (setup.plan.output_name or setup.proto.output_name(setup.opts)) + (f"-sr-{setup.sr_info['run']}" if setup.sr_run is not None else "")


def write_record(setup: Setup, out_path: Path, *, dataset: str, images_info: dict[str, Any], emb: Embeddings,
                 results: dict[str, Any], stats: EmbedStats, cache: EmbeddingCache, clock: Clock, st: Any) -> dict[str, Any]:
    """``out_path`` (with its per-face ``.quality.csv``), merged with the results already there for
    the same setup; the record as printed (its ``path`` added)."""
    plan, loaded, opts = setup.plan, setup.loaded, setup.opts
    quality_summary, quality_rows = face_quality(emb, plan.requests)
    quality_csv = out_path.with_suffix(".quality.csv")
    write_quality_csv(quality_csv, quality_rows)
    variants = sorted({v.describe() for v in plan.requests})
    record = EvalRecord.build(
        dataset=dataset,
        protocol=plan.protocol,
        protocol_info=plan.info,
        model={**loaded.describe(), "flip": setup.flip, "precision": setup.prec, "preprocessing": loaded.preprocessing()},
        images=images_info,
        degradation={"method": opts.method, "blur": opts.blur, "noise": opts.noise, "jpeg": opts.jpeg, "seed": opts.seed,
                     "upsample": f"{opts.up_method} back to the input size", "up_method": opts.up_method, "variants": variants,
                     **({"sr": setup.sr_run.tag} if setup.sr_run is not None else {})},
        super_resolution=setup.sr_info,
        quality={"per_face": str(quality_csv), "measures": QUALITY_HELP, "variants": quality_summary},
        sizes=setup.proto.record_sizes(results),
        results=results,
        embeddings={"cache": str(cache.dir), "computed": stats.computed, "cached": stats.cached,
                    "forward_images": stats.forward_images, "per_variant": stats.per_variant},
        timings=clock.timings(stats),
        device=str(setup.dev),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=package_versions(),
        git_commit=git_commit(),
    )
    old = _previous(out_path)
    record.doc["merged_with_previous"] = record.merge_previous(old) if old is not None else []
    if out_path.exists() and not record.doc["merged_with_previous"] and (old is None or not record.same_setup(old)):
        st.warn(f"{out_path.name}: replacing results made with another model, alignment or degradation (use --name to keep both)")
    record.save(out_path)
    doc = record.to_dict()
    doc["path"] = str(out_path)
    return doc


def _previous(path: Path) -> EvalRecord | None:
    """The eval already at ``path``, if it is readable (an unreadable one is simply replaced)."""
    try:
        return EvalRecord.load(path) if path.exists() else None
    except ResultsError:
        return None
