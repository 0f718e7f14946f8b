"""``lrfr align``: raw photos → aligned 112x112 faces in ``<workspace>/aligned/NAME``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..align.options import (
    AlignConfig,
    check_name_clashes,
    parse_size,
    parse_thresholds,
)
from ..align.pipeline import align_tree
from ..data.images import list_images, parse_exts
from ..engine import resolve_device
from ..errors import LrfrError
from ..workspace import fingerprint_tree
from . import _options as opt
from ._artifact_job import FAILURES_CSV, MANIFEST_FAILURES, ArtifactJob, failure_rows
from ._common import handle_errors, resolve_input, state, workspace
from ._deprecated import old_spelling, prefer


@handle_errors
def align(
    src: Path = typer.Argument(..., help="Folder of photos, usually identity folders SRC/<identity>/<photo>; the tree is mirrored."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output name: faces go to <workspace>/aligned/NAME/ (default: SRC's folder name)."),
    size: str = typer.Option("112", "--size", help="Output size: 112 (ArcFace template), 96x112 (SphereFace/CosFace crop) or a square size such as 128 (template scaled)."),
    select: str = typer.Option("largest", "--select", help="Photos with several faces: largest (biggest box), center (box nearest the photo centre) or all (writes NAME_0.jpg, NAME_1.jpg, ... largest first)."),
    min_face: int = typer.Option(30, "--min-face", help="MTCNN's smallest face searched for, in pixels of the detection image (see --max-side). Faces below ~20 px cannot be detected: use --assume-cropped."),
    min_prob: float = typer.Option(0.95, "--min-prob", help="Keep faces whose detection probability is at least this."),
    thresholds: str = typer.Option("0.6,0.7,0.7", "--thresholds", help="MTCNN's P-, R- and O-net thresholds."),
    max_side: int = typer.Option(800, "--max-side", help="Photos are scaled so the longer side is at most this for detection (the warp always samples the full-resolution photo); 0 = never scale."),
    margin: float = typer.Option(0.0, "--crop-margin", help="Extra context in output pixels on each side (the template shrinks about the centre). 0 = the exact ArcFace crop most models expect."),
    fallback: str = typer.Option("none", "--fallback", help="Photos without a face: none (only listed in failures.csv) or center-crop (also write a centred crop, marked 'fallback' in landmarks.csv)."),
    assume_cropped: bool = typer.Option(False, "--assume-cropped", help="Inputs are tight face crops (e.g. 16-24 px surveillance faces, too small for MTCNN): map each crop onto the template's face box without detection."),
    fmt: str = typer.Option("jpg", "--format", help="Output format: jpg (quality --quality; what the training data uses) or png (lossless)."),
    quality: opt.JpegQuality = 92,
    device: str = typer.Option("auto", "--device", help="Where MTCNN runs: auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Same-size photos detected together in one MTCNN pass."),
    workers: int = typer.Option(-1, "--workers", "-j", help="Decode processes; 0 = in the main process; -1 = auto: one per core beyond the first for photos over 1 megapixel, else 0 (small photos decode faster than they ship between processes)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for MTCNN (0 = torch's default: all cores, less one per decode process). On cores busy with other jobs, 1 can be several times faster."),
    ext: opt.Ext = None,
    force: bool = typer.Option(False, "--force", help="Redo an artifact that is complete, or was made with other options."),
    old_margin: Annotated[float | None, old_spelling("--margin", "--crop-margin")] = None,
    old_quality: Annotated[int | None, old_spelling("--quality", "--jpeg-quality")] = None,
) -> None:
    """Detect faces (MTCNN, batched) and warp each onto the ArcFace template, resumably.

    Photos without a face go to failures.csv; every face's box, landmarks and transform go to landmarks.csv. A folder whose images are all already the output size is copied unchanged.
    """
    margin = prefer("align", margin, old_margin, new_flag="--crop-margin", old_flag="--margin", default=0.0,
                    why="--margin is the loss margin in lrfr train")
    quality = prefer("align", quality, old_quality, new_flag="--jpeg-quality", old_flag="--quality", default=92,
                     why="--quality is the image-quality measure in lrfr train")
    st = state()
    ws = workspace()
    cfg = AlignConfig(
        size=parse_size(size),
        select=select,
        min_face=min_face,
        thresholds=parse_thresholds(thresholds),
        min_prob=min_prob,
        max_side=max_side,
        margin=margin,
        fallback=fallback,
        assume_cropped=assume_cropped,
        fmt=fmt,
        quality=quality,
    ).validate()
    if batch_size < 1:
        raise LrfrError(f"--batch-size {batch_size}: expected >= 1")
    dev = resolve_device(device)
    src = resolve_input(src, ws.root)
    name = out or src.name
    images = list_images(src, parse_exts(ext))
    if not images:
        raise LrfrError(f"{src}: no images found (looked for {', '.join(parse_exts(ext))} recursively); point SRC at a folder of photos")
    ws.ensure_writable()
    rels = [p.relative_to(src).as_posix() for p in images]
    check_name_clashes(rels, cfg)
    art = ws.artifact("aligned", name)
    job = ArtifactJob("align", force=force, name=name, path=str(art.path))
    with job.claim(art, cfg.to_dict(), {"src": fingerprint_tree(src, images)},
                   up_to_date=lambda c: f"aligned/{name}: {c.get('faces')} faces from {c.get('images')} images",
                   resuming=f"resuming aligned/{name} (faces already written are kept)") as run:
        if run.skipped:
            return
        with st.progress(f"align {name}", total=len(rels)) as progress:
            res = align_tree(src, art.path, rels, device=str(dev), batch_size=batch_size, workers=workers, threads=threads,
                             progress=progress, **cfg.__dict__)
        counts = {
            "images": res.images,
            "faces": res.faces,
            "written": res.written,
            "already_done": res.already_done,
            "failed": len(res.failures),
            "fallbacks": res.fallbacks,
            "passthrough": res.passthrough,
            "mean_fit_error_px": None if res.mean_fit_error is None else round(res.mean_fit_error, 3),
        }
        run.record(**counts, failures=failure_rows(res.failures, MANIFEST_FAILURES), device=str(dev))
    seconds, rate = job.clock(res.images)
    if res.note:
        st.info(f"note: {res.note}")
    job.warn_failures(res.failures, f"image(s) without an aligned face (listed in {art.path / FAILURES_CSV})")
    fb = f", {res.fallbacks} centre-crop fallbacks" if res.fallbacks else ""
    job.done(
        f"[green]aligned[/green] {res.images} images → {res.faces} faces{fb}, {len(res.failures)} failed, "
        f"in {seconds:.1f} s ({rate:,.1f} img/s on {dev}) → {art.path}",
        {
            "resumed": run.resumed,
            **counts,
            "failures": failure_rows(res.failures),
            "seconds": round(seconds, 3),
            "images_per_s": round(rate, 3),
            "device": str(dev),
            "workers": res.workers,
            "threads": res.threads,
            "size": list(cfg.out_wh),
        },
    )


def register(app: typer.Typer) -> None:
    app.command("align")(align)

