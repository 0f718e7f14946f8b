"""``lrfr eval``: a model under the published low-resolution protocols → ``evals/RUN/<name>.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from .. import protocols
from ..data.filters import UP_METHOD_HELP
from ..embed.model import AUTO_HELP
from ..engine import resolve_device, resolve_precision
from ..errors import LrfrError
from . import _model_options as mopt
from . import _options as opt
from ._common import handle_errors, state, workspace
from ._deprecated import old_spelling, prefer, require
from ._eval_run import Clock, align_faces, check_choices, data_root, embed_faces, eval_options, output_name, prepare, write_record

_BATCH: list[tuple[str, dict[str, Any]]] | None = None  # several --data files: each record's summary, printed once


def _for(*option: str) -> str:
    """``LFW:`` before an option's help: the registered protocols that read it."""
    return ", ".join(p.title for p in protocols.PROTOCOLS.values() if any(o in p.options for o in option)) + ":"


@handle_errors
def eval_cmd(
    dataset: Annotated[str | None, typer.Option("--dataset", help=f"Protocol (required): {', '.join(protocols.names())}.")] = None,
    model: str = typer.Option(..., "--model", "-m", help="runs/RUN (or RUN) from `lrfr train`/`finetune`, an external checkpoint file (.pt/.pth/.ckpt: insightface or AdaFace state dict), or an .onnx file (run by onnxruntime; its preprocessing from its metadata_props or --layout, --channel-order, --pixel-mean, --pixel-std)."),
    backbone: mopt.CheckpointBackbone = None,
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
    st = state()
    ws = workspace()
    clock = Clock(time.time())
    dataset = dataset.strip().lower()
    proto = protocols.get(dataset)
    check_choices(down_method, up_method, align)
    flip = proto.flip_default if flip is None else flip
    opts = eval_options(proto, args)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    root = data_root(proto, data, ws.root)
    items = proto.data_items(root)
    if items != [root]:  # a folder or list of files (even of one): a record each, {"records": [...]} with --json
        _each_item(items, args)
        return

    setup = prepare(proto, root, opts, model=model, sr=sr, backend=backend, dev=dev, prec=prec, flip=flip, ws_root=ws.root, st=st,
                    backbone=backbone, checkpoint=checkpoint, channel_order=channel_order, layout=layout,
                    pixel_mean=pixel_mean, pixel_std=pixel_std)
    ws.ensure_writable()
    warning = proto.model_warning(setup.plan, setup.loaded.config)
    if warning:
        st.warn(warning)
    images_info = align_faces(setup, align, ws, workers=workers, landmarks=landmarks, clock=clock, st=st)
    emb, stats, cache = embed_faces(setup, ws, batch_size=batch_size, workers=workers, force=force, st=st)
    clock.embedded = time.time()
    results = setup.plan.score(emb)
    clock.scored = time.time()
    out_path = ws.root / "evals" / setup.loaded.name / f"{output_name(setup, name)}.json"
    doc = write_record(setup, out_path, dataset=dataset, images_info=images_info, emb=emb, results=results, stats=stats,
                       cache=cache, clock=clock, st=st)

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
