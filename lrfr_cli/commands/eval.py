"""``lrfr eval``: a model under the published low-resolution protocols → ``evals/RUN/<name>.json``."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from .. import protocols
from ..data.degrade import METHODS, UP_METHOD_HELP, UP_METHODS, parse_sizes
from ..data.sources import AlignedFolder
from ..embed import EmbeddingCache, embed, pending, resolve_model
from ..embed.extract import with_sr
from ..embed.model import AUTO_HELP, choose_backend
from ..engine import resolve_device, resolve_precision
from ..errors import LrfrError
from ..progress import null_progress
from ..protocols import EvalOptions, EvalProtocol
from ..protocols.quality import face_quality
from ..protocols.quality import write_csv as write_quality_csv
from ..results import EvalRecord, ResultsError
from ..workspace import Workspace, git_commit, package_versions
from . import _options as opt
from ._common import handle_errors, state, workspace
from ._deprecated import old_spelling, prefer, require

QUALITY_HELP = ("feature_norm: norm of the raw embedding (AdaFace's quality proxy); laplacian_variance / "
                "laplacian_mean_abs: sharpness of the grey face as the network saw it (Approach2's measure)")
ALIGNS = ("mtcnn", "center-crop", "none", "landmarks", "seed-landmarks")
_BATCH: list[tuple[str, dict[str, Any]]] | None = None  # several --data files: each record's summary, printed once


def _for(*option: str) -> str:
    """``LFW:`` before an option's help: the registered protocols that read it."""
    return ", ".join(p.title for p in protocols.PROTOCOLS.values() if any(o in p.options for o in option)) + ":"


def _data_root(proto: EvalProtocol, data: Optional[Path], ws_root: Path) -> Path:
    if data is not None:
        data = data.expanduser()
        if not data.exists() and not data.is_absolute() and (ws_root / data).exists():
            return ws_root / data  # a workspace artifact such as aligned/NAME
        return data
    base = Path(os.environ.get("LRFR_DATA", "data")).expanduser()
    return proto.default_root(base)


def _aligned_images(proto: EvalProtocol, center: Any, root: Path, align: str, rels: list[str], ws: Workspace, device: str,
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


@handle_errors
def eval_cmd(
    dataset: Annotated[str | None, typer.Option("--dataset", help=f"Protocol (required): {', '.join(protocols.names())}.")] = None,
    model: str = typer.Option(..., "--model", "-m", help="runs/RUN (or RUN) from `lrfr train`/`finetune`, an external checkpoint file (.pt/.pth/.ckpt: insightface or AdaFace state dict), or an .onnx file (run by onnxruntime; its preprocessing from its metadata_props or --layout, --channel-order, --pixel-mean, --pixel-std)."),
    backbone: opt.CheckpointBackbone = None,
    checkpoint: opt.Checkpoint = "auto",
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root (default " + ", ".join(f"$LRFR_DATA/{p.data_dir or p.name}" for p in protocols.PROTOCOLS.values()) + "). --dataset bin: a .bin file, a folder of them or a,b.bin (one record each)."),
    sizes: str = typer.Option("8,12,16,20,112", "--sizes", "-s", help=f"{_for('sizes')} probe heights in pixels; the input size (112) means HR. E.g. 8,12,16,20 (Deep Siamese) or 7,14,28,56,112 (thesis)."),
    setting: str = typer.Option("hr-lr", "--setting", help=f"{_for('setting')} hr-hr, hr-lr (first image HR, second degraded to each size) or lr-lr (both degraded)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help=f"{_for('pairs')} pairs file in pairs.txt format (default ROOT/pairs.txt, View 2); e.g. pairsDevTest.txt for View 1."),
    threshold_pairs: Optional[Path] = typer.Option(None, "--threshold-pairs", help=f"{_for('threshold_pairs')} with single-fold pairs files, pairs to choose the threshold on (default: pairsDevTrain.txt beside pairsDevTest.txt)."),
    align: str = typer.Option("mtcnn", "--align", help=f"{_for('align')} mtcnn (as `lrfr align` made the training faces; cached in aligned/lfw-mtcnn), center-crop (fixed warp of the deep-funneled image; fast), none (already aligned), landmarks (5 points from --landmarks FILE, lrfr's warp) or seed-landmarks (the same points, the Deep Siamese seed's crop)."),
    distance: str = typer.Option("all", "--distance", help=f"{_for('distance')} probe distance 1 (4.20 m), 2 (2.60 m), 3 (1.00 m), a list like 1,2, or all."),
    landmarks: Optional[Path] = typer.Option(None, "--landmarks", help="SCface: folder with scface_mugshot.csv and scface_distance{{1,2,3}}.csv (default $LRFR_DATA/protocols/scface); LFW with --align landmarks: a 'Name/Name_0001.jpg,x1,y1,...,x5,y5' file (default $LRFR_DATA/protocols/lfw_landmarks/LFW.csv)."),
    distractors: bool = typer.Option(True, "--distractors/--no-distractors", help=f"{_for('distractors')} add Gallery_Distractor to the gallery (the official protocol)."),
    down_method: opt.DownMethod = "bicubic",
    up_method: str = typer.Option("bicubic", "--up-method", help=f"{_for('up_method')} filter that brings LR probes back to the input size. {UP_METHOD_HELP}"),
    blur: opt.Blur = 0.0,
    noise: opt.Noise = 0.0,
    jpeg: opt.Jpeg = None,
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    sr: str = typer.Option("bicubic", "--sr", help=f"{_for('sr')} how LR probes are brought back to the input size: bicubic (the baseline, up-sampling only) or runs/SRRUN from `lrfr train --task sr` (the bicubic face then super-resolved by that network; HR images are untouched and their cached embeddings reused). Sizes the SR run was not trained at are allowed with a warning."),
    bin_channels: str = typer.Option("rgb", "--bin-channels", help=f"{_for('bin_channels')} rgb (the pack's JPEG/PNG files hold true colours: insightface's packs, lrfr make-bin) or bgr (red and blue swapped in the files, as when RGB arrays were encoded with OpenCV)."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Add the horizontally flipped image's embedding before L2-normalising (default: on for IJB-B/C, as insightface scores them; off elsewhere).", show_default=False),
    channel_order: opt.ChannelOrder = "auto",
    layout: opt.OnnxLayout = None,
    pixel_mean: opt.PixelMean = None,
    pixel_std: opt.PixelStd = None,
    backend: str = typer.Option("auto", "--backend", help=f"Embedding backend: torch, onnxruntime (our runs exported to ONNX on the fly, cached in the workspace's cache/onnx) or auto: {AUTO_HELP}."),
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per forward pass."),
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Image decoding worker processes (0 = in the main process)."),
    name: Optional[str] = typer.Option(None, "--name", help="Output file evals/RUN/NAME.json (default: the dataset, plus pairs/setting when not the standard ones)."),
    force: bool = typer.Option(False, "--force", help="Recompute embeddings instead of using the cache."),
    old_dataset: Annotated[str | None, old_spelling("-d", "--dataset")] = None,
    old_method: Annotated[str | None, old_spelling("--method", "--down-method")] = None,
) -> None:
    """Measure a model under a low-resolution protocol; writes evals/RUN/<dataset>.json.

    Every unique (image, size, degradation) is embedded once per model and cached under
    embeddings/, so a second eval of the same model (another setting, more sizes) reuses it.

    Examples: lrfr eval --dataset lfw -m runs/RUN --sizes 8,12,16,20,112 ·
    lrfr eval --dataset lfw -m runs/RUN --pairs $LRFR_DATA/lfw/pairsDevTest.txt --setting lr-lr ·
    lrfr eval --dataset scface --distance 2 -m runs/RUN --data /data/SCface ·
    lrfr eval --dataset survface -m ms1mv3_r50.pth --data /data/QMUL-SurvFace ·
    lrfr eval --dataset bin -m runs/RUN --data ms1m/cfp_fp.bin,ms1m/agedb_30.bin --flip
    """
    dataset = require(prefer("eval", dataset, old_dataset, new_flag="--dataset", old_flag="-d", why="-d is --data in train and finetune"), "--dataset")
    down_method = prefer("eval", down_method, old_method, new_flag="--down-method", old_flag="--method", default="bicubic",
                         why="--method is the fine-tuning method in lrfr finetune")
    old_dataset = old_method = None
    args = dict(locals())  # first (after the old spellings): the options as given, for one call per --data file
    method = down_method
    st = state()
    ws = workspace()
    t0 = time.time()
    dataset = dataset.strip().lower()
    proto = protocols.get(dataset)
    if method not in METHODS:
        raise LrfrError(f"--down-method {method!r}: choose one of {', '.join(METHODS)}")
    if up_method not in UP_METHODS:
        raise LrfrError(f"--up-method {up_method!r}: choose one of {', '.join(UP_METHODS)}")
    if align not in ALIGNS:
        raise LrfrError(f"--align {align!r}: choose one of {', '.join(ALIGNS)}")
    flip = proto.flip_default if flip is None else flip
    size_list = parse_sizes(sizes)
    # planned first at 112 (or the largest size asked for: a 128-px network's HR); re-planned at the
    # model's own input size once it is loaded, so bad data still fails before the model loads
    opts = EvalOptions(sizes=size_list, setting=setting, pairs=pairs, threshold_pairs=threshold_pairs,
                       distance=distance, landmarks=landmarks, distractors=distractors, method=method, blur=blur,
                       noise=noise, jpeg=jpeg, seed=seed, input_size=max(112, *size_list), up_method=up_method,
                       bin_channels=bin_channels)
    proto.check(opts)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    root = _data_root(proto, data, ws.root)
    items = proto.data_items(root)
    if items != [root]:  # a folder or list of files (even of one): a record each, {"records": [...]} with --json
        _each_item(items, args)
        return

    # Protocol first: bad data should fail before a model is loaded.
    images_info: dict[str, Any] = {}
    plan = proto.plan(root, opts)

    sr_info, sr_aliases, sr_run = _super_resolution(sr, proto, opts, ws.root, st)
    if sr_run is not None:
        plan.requests, sr_aliases = with_sr(plan.requests, sr_run)

    backend = choose_backend(backend, model, dev.type)
    if backend == "onnxruntime" and prec != "fp32":
        raise LrfrError(f"--precision {prec}: the onnxruntime backend runs the graph in fp32; drop --precision or pass --backend torch")
    loaded = resolve_model(model, ws.root, backbone=backbone, checkpoint=checkpoint, channel_order=channel_order, layout=layout,
                           pixel_mean=pixel_mean, pixel_std=pixel_std, backend=backend, device=str(dev),
                           onnx_cache=ws.root / "cache" / "onnx")
    if loaded.input_size != opts.input_size:
        # a network with another input (the Deep Siamese seed's 128 px): faces made at its size
        opts = dataclasses.replace(opts, input_size=loaded.input_size)
        plan = proto.plan(root, opts)
        if sr_run is not None:
            plan.requests, sr_aliases = with_sr(plan.requests, sr_run)
    ws.ensure_writable()
    warning = proto.model_warning(plan, loaded.config)
    if warning:
        st.warn(warning)

    t_align = time.time()
    if "align" in proto.options:
        all_rels = list(dict.fromkeys(r for rels in plan.requests.values() for r in rels))
        plan.images, images_info = _aligned_images(proto, plan.images, root, align, all_rels, ws, device=str(dev), workers=workers, st=st,
                                                   size=opts.input_size, landmarks=landmarks)
    images_info = {**plan.images.describe(), **images_info}
    align_s = time.time() - t_align

    cache_id = loaded.cache_id + ("" if prec == "fp32" else f"-{prec}")
    cache = EmbeddingCache(ws, cache_id, plan.images.name,
                           {"images": plan.images.describe(), "model_sha1": loaded.sha1, "precision": prec,
                            "channel_order": loaded.channel_order, "backend": loaded.backend,
                            **({"input_contract": loaded.contract} if loaded.contract else {})}, refresh=force)
    with cache.artifact.lock():
        todo = pending(plan.requests, cache, flip)
        bar = st.progress(f"embed {plan.dataset} ({len(plan.requests)} variant(s))", total=todo) if todo else contextlib.nullcontext(null_progress)
        with bar as progress:
            emb, stats = embed(loaded, plan.images, plan.requests, cache, flip=flip, device=dev, precision=prec,
                               batch_size=batch_size, workers=workers, progress=progress)
    emb.aliases = sr_aliases
    t1 = time.time()
    results = plan.score(emb)
    t2 = time.time()

    out_name = name or (plan.output_name or proto.output_name(opts)) + (f"-sr-{sr_info['run']}" if sr_run is not None else "")
    out_path = ws.root / "evals" / loaded.name / f"{out_name}.json"
    quality_summary, quality_rows = face_quality(emb, plan.requests)
    quality_csv = out_path.with_suffix(".quality.csv")
    write_quality_csv(quality_csv, quality_rows)
    variants = sorted({v.describe() for v in plan.requests})
    record = EvalRecord.build(
        dataset=dataset,
        protocol=plan.protocol,
        protocol_info=plan.info,
        model={**loaded.describe(), "flip": flip, "precision": prec, "preprocessing": loaded.preprocessing()},
        images=images_info,
        degradation={"method": method, "blur": blur, "noise": noise, "jpeg": jpeg, "seed": seed,
                     "upsample": f"{up_method} back to the input size", "up_method": up_method, "variants": variants,
                     **({"sr": sr_run.tag} if sr_run is not None else {})},
        super_resolution=sr_info,
        quality={"per_face": str(quality_csv), "measures": QUALITY_HELP, "variants": quality_summary},
        sizes=proto.record_sizes(results),
        results=results,
        embeddings={"cache": str(cache.dir), "computed": stats.computed, "cached": stats.cached,
                    "forward_images": stats.forward_images, "per_variant": stats.per_variant},
        timings={"load_and_align_s": round(t1 - t0 - stats.seconds, 3), "align_s": round(align_s, 3),
                 "embed_s": round(stats.seconds, 3), "score_s": round(t2 - t1, 3),
                 "total_s": round(time.time() - t0, 3),
                 "images_per_s": round(stats.forward_images / stats.seconds, 2) if stats.seconds > 0 and stats.forward_images else None},
        device=str(dev),
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

    st.table(_table(dataset, doc))
    if _BATCH is not None:
        _BATCH.append((_line(dataset, doc, out_path), doc))
        return
    st.summary(_line(dataset, doc, out_path), doc)


def _each_item(items: list[Path], args: dict[str, Any]) -> None:
    """Several ``--data`` files (``.bin`` packs): one eval and one record each, one summary
    (``--json``: ``{"records": [...]}``, each the record a single file would print)."""
    global _BATCH
    if args["name"]:
        raise LrfrError("--name names one output; with several --data files each record is named after its file (leave --name out)")
    _BATCH = []
    try:
        for item in items:
            eval_cmd.__wrapped__(**{**args, "data": item})  # type: ignore[attr-defined]
        done = _BATCH
    finally:
        _BATCH = None
    state().summary("\n".join(line for line, _ in done),
                    {"command": "eval", "dataset": args["dataset"], "records": [doc for _, doc in done]})


def _super_resolution(sr: str, proto: EvalProtocol, opts: EvalOptions, ws_root: Path, st: Any) -> tuple[dict[str, Any], dict[Any, Any], Any]:
    """``--sr``: the record's ``super_resolution`` block and, for an SR run, its front end (one-line
    errors for a recogniser given as --sr, a protocol without synthetic LR probes)."""
    if sr.strip().lower() == "bicubic":
        return {"method": "bicubic", "note": "LR probes up-sampled back to the input size by bicubic interpolation only"}, {}, None
    what = proto.sr_refusal(opts)
    if what is not None:
        raise LrfrError(f"--sr {sr}: super-resolution applies to LFW's degraded probes (--setting hr-lr or lr-lr), not to {what}")
    from ..sr.infer import SRFront, load_sr_run

    srm = load_sr_run(sr, ws_root)
    outside = srm.sizes_outside_training(opts.sizes)
    if outside:
        st.warn(f"--sr runs/{srm.name} was trained at {','.join(map(str, srm.sizes))} px; "
                f"also applying it at {','.join(map(str, outside))} px (recorded as sizes_outside_training)")
    return {**srm.describe(), "sizes_outside_training": outside}, {}, SRFront(srm.tag, srm.module)


def _previous(path: Path) -> EvalRecord | None:
    """The eval already at ``path``, if it is readable (an unreadable one is simply replaced)."""
    try:
        return EvalRecord.load(path) if path.exists() else None
    except ResultsError:
        return None


def _table(dataset: str, doc: dict[str, Any]) -> Table:
    t = Table(title=f"{doc['model']['name']} · {doc['protocol']}", title_justify="left")
    columns, rows = protocols.for_record(dataset).table(doc)
    for col in columns:
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(*row)
    return t


def _line(dataset: str, doc: dict[str, Any], out: Path) -> str:
    body = protocols.for_record(dataset).headline(doc)
    e = doc["embeddings"]
    sr = doc.get("super_resolution") or {}
    body += f" (probes super-resolved by runs/{sr['run']})" if sr.get("run") else ""
    return (f"[green]evaluated[/green] {doc['model']['name']} on {dataset}: {body} "
            f"({e['computed']} embedded, {e['cached']} from cache, {doc['timings']['total_s']:.1f} s) → {out}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
