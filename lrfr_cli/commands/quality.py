"""``lrfr quality DIR``: a quality score per face (feature norm, Laplacian) → quality/NAME/scores.csv."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from ..errors import LrfrError
from ..workspace import Workspace, fingerprint_tree
from . import _model_options as mopt
from . import _options as opt
from ._artifact_job import ArtifactJob
from ._common import handle_errors, resolve_input, state, workspace

if TYPE_CHECKING:
    import numpy as np
    from rich.table import Table

    from ..embed import LoadedModel

MEASURES = ("feature_norm", "laplacian_variance", "laplacian_mean_abs")


@handle_errors
def quality_cmd(
    src: Path = typer.Argument(..., help="Folder of faces (any tree), or a workspace artifact such as aligned/NAME or degraded/NAME/16px. Faces not at the input size are resized to it."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="runs/RUN or an external checkpoint: adds the feature norm (AdaFace's quality proxy). Without it only the Laplacian measures are computed."),
    backbone: mopt.CheckpointBackbone = None,
    checkpoint: opt.Checkpoint = "auto",
    channel_order: opt.ChannelOrder = "auto",
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output name: quality/NAME/ (default: SRC's folder name)."),
    min_norm: Optional[float] = typer.Option(None, "--min-norm", min=0.0, help="Reject faces whose feature norm is below this (needs --model); listed in rejected.txt, the rest in kept.txt."),
    min_laplacian: Optional[float] = typer.Option(None, "--min-laplacian", min=0.0, help="Reject faces whose Laplacian variance is below this (an 8-px face brought back to 112 scores ~2-3, a sharp one hundreds)."),
    size: int = typer.Option(112, "--size", min=16, help="Input size without --model (with one, the model's input size)."),
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Faces per forward pass."),
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Image decoding worker processes (0 = in the main process)."),
    threads: opt.Threads = 0,
    ext: opt.Ext = None,
    force: bool = typer.Option(False, "--force", help="Recompute (and replace an output made from other inputs or options)."),
) -> None:
    """Score every face of a folder by quality (feature norm, Laplacian sharpness) to drop unusable ones.

    Writes quality/NAME/scores.csv (image, feature_norm, laplacian_variance,
    laplacian_mean_abs) and, with --min-norm/--min-laplacian, rejected.txt and
    kept.txt. The feature norm is the length of the model's raw embedding:
    short for faces the model cannot place (AdaFace's quality proxy). The
    Laplacian variance is the sharpness Approach2 sets its margin from. Both
    are measured on the face as the network sees it. With --model the pass is
    cached and resumes after a kill.

    Examples: lrfr quality aligned/cctv -m runs/RUN --min-norm 12 ·
    lrfr quality degraded/faces/8px --min-laplacian 5 --json
    """
    st = state()
    ws = workspace()
    if min_norm is not None and model is None:
        raise LrfrError("--min-norm needs --model (the feature norm is the model's)")
    src = resolve_input(src, ws.root)
    images = _faces(src, ext)
    rels = [p.relative_to(src).as_posix() for p in images]
    name = out or src.name
    if not name or "/" in name or name.startswith("."):
        raise LrfrError(f"--out {name!r}: use a plain folder name (quality/NAME/)")
    if threads:
        import torch

        torch.set_num_threads(threads)
    loaded = _load(model, ws.root, backbone=backbone, checkpoint=checkpoint, channel_order=channel_order)
    if loaded is not None:
        size = loaded.input_size
    ws.ensure_writable()
    art = ws.artifact("quality", name)
    options: dict[str, Any] = {"model": loaded.describe() if loaded else None, "size": size, "precision": precision if loaded else None,
                               "min_norm": min_norm, "min_laplacian": min_laplacian}
    job = ArtifactJob("quality", force=force)
    with job.claim(art, options, {"src": fingerprint_tree(src, images)}) as run:
        if not run.skipped:
            scores = _scores(loaded, ws, src, rels, size, device=device, precision=precision, batch_size=batch_size,
                             workers=workers, force=force, st=st)
            summary, rejected = _write(art.path, rels, scores, min_norm, min_laplacian)
            run.record(faces=len(rels), summary=summary, rejected=rejected)
        counts = dict(run.counts)
    doc = {"name": name, "path": str(art.path), "scores": str(art.path / "scores.csv"), "faces": counts.get("faces"),
           "summary": counts.get("summary"), "rejected": counts.get("rejected"), "skipped": run.skipped,
           "model": loaded.name if loaded else None, "seconds": round(time.time() - job.t0, 3)}
    st.table(_table(src, counts))
    what = "already complete" if run.skipped else f"{counts.get('faces')} faces scored"
    rej = f", {counts['rejected']} rejected (rejected.txt)" if counts.get("rejected") is not None else ""
    st.summary(f"[green]quality[/green] {what}{rej} → {art.path / 'scores.csv'}", doc)


def _faces(src: Path, ext: Optional[str]) -> list[Path]:
    """The images under ``src`` (recursively), or the error that says which extensions were sought."""
    from ..data.images import list_images, parse_exts

    images = list_images(src, parse_exts(ext))
    if not images:
        raise LrfrError(f"{src}: no images found (looked for {', '.join(parse_exts(ext))} recursively)")
    return images


def _load(model: Optional[str], ws_root: Path, **model_opts: Any) -> LoadedModel | None:
    """``--model``, loaded (its input size then decides the faces'), or None for the Laplacian alone."""
    if model is None:
        return None
    from ..embed import resolve_model

    return resolve_model(model, ws_root, **model_opts)


def _scores(loaded: LoadedModel | None, ws: Workspace, src: Path, rels: list[str], size: int, *, device: str, precision: str,
            batch_size: int, workers: int, force: bool, st: Any) -> dict[str, np.ndarray]:
    """Each measure over ``rels``: with a model, its feature norm and the Laplacians through the
    embedding cache (so the pass resumes after a kill); without one, the Laplacians alone."""
    from ..embed.quality import folder_images, laplacian_scores, model_scores

    if loaded is None:
        with st.progress(f"Laplacian of {len(rels)} faces", total=len(rels)) as progress:
            return laplacian_scores(src, rels, size, batch=batch_size, progress=progress)
    from ..embed import EmbeddingCache
    from ..engine import resolve_device, resolve_precision

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    faces = folder_images(src, size)
    cache = EmbeddingCache(ws, loaded.cache_id + ("" if prec == "fp32" else f"-{prec}"), faces.name,
                           {"images": faces.describe(), "model_sha1": loaded.sha1, "precision": prec,
                            "channel_order": loaded.channel_order}, refresh=force)
    with cache.artifact.lock(), st.progress(f"quality of {len(rels)} faces ({loaded.name})", total=len(rels)) as progress:
        scores, _ = model_scores(loaded, cache, faces, rels, device=dev, precision=prec, batch_size=batch_size,
                                 workers=workers, progress=progress)
    return scores


def _write(folder: Path, rels: list[str], scores: dict[str, np.ndarray], min_norm: Optional[float],
           min_laplacian: Optional[float]) -> tuple[dict[str, Any], int | None]:
    """scores.csv, summary.json and, with a threshold, rejected.txt and kept.txt in ``folder``;
    the per-measure summary and how many faces were rejected (None without a threshold)."""
    import numpy as np

    from ..protocols.quality import summarize
    from ..workspace import atomic_path, atomic_write_json

    cols = [m for m in MEASURES if m in scores]
    reject = np.zeros(len(rels), dtype=bool)
    if min_norm is not None:
        reject |= scores["feature_norm"] < min_norm
    if min_laplacian is not None:
        reject |= scores["laplacian_variance"] < min_laplacian
    with atomic_path(folder / "scores.csv") as tmp:
        with open(tmp, "w") as fh:
            fh.write(",".join(["image", *cols]) + "\n")
            for i, r in enumerate(rels):
                fh.write(",".join([r, *(f"{scores[m][i]:.6g}" for m in cols)]) + "\n")
    thresholds = min_norm is not None or min_laplacian is not None
    if thresholds:
        for fname, mask in (("rejected.txt", reject), ("kept.txt", ~reject)):
            with atomic_path(folder / fname) as tmp:
                Path(tmp).write_text("".join(r + "\n" for r, bad in zip(rels, mask) if bad))
    summary = {m: summarize(scores[m]) for m in cols}
    atomic_write_json(folder / "summary.json", {"faces": len(rels), "measures": summary})
    return summary, int(reject.sum()) if thresholds else None


def _table(src: Path, counts: dict[str, Any]) -> Table:
    """The recorded summary of each measure, one row each."""
    from rich.table import Table

    t = Table(title=f"quality of {src} ({counts.get('faces')} faces)", title_justify="left")
    for c in ("measure", "mean", "p10", "median", "p90"):
        t.add_column(c, justify="right")
    for m, s in (counts.get("summary") or {}).items():
        t.add_row(m, *(f"{s[k]:.4g}" for k in ("mean", "p10", "p50", "p90")))
    return t


def register(app: typer.Typer) -> None:
    app.command("quality")(quality_cmd)
