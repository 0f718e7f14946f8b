"""Super-resolve a folder's faces with an SR run (writes sr/NAME/<size>px/ and a contact sheet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from ..data.degrade import DegradeSpec
from ..data.filters import METHODS
from ..data.images import list_images, parse_exts
from ..engine import resolve_device
from ..errors import LrfrError
from ..registry import check_choice
from ..workspace import fingerprint_tree
from . import _options as opt
from ._artifact_job import ArtifactJob, failure_lines
from ._common import handle_errors, resolve_input, state, workspace
from ._deprecated import old_spelling, prefer


@handle_errors
def sr_cmd(
    src: Path = typer.Argument(..., help="Folder of aligned faces (any tree; mirrored), or a workspace artifact such as aligned/NAME. Non-112-px images are resized to 112."),
    model: str = typer.Option(..., "--model", "-m", help="runs/SRRUN from `lrfr train --task sr` (a recognition run is refused)."),
    size: int = typer.Option(16, "--lr-size", min=1, max=111, help="LR height in pixels each face is degraded to (as `lrfr eval` degrades probes) before it is super-resolved."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output name: <workspace>/sr/NAME/<size>px/ and sr/NAME/contact_<size>px.png (default: SRC's folder name)."),
    method: opt.DownMethod = "bicubic",
    sheet: int = typer.Option(8, "--sheet", min=0, help="Faces on the before/after contact sheet (LR input, bicubic, SR, HR; spread over the folder); 0 = none."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Faces per forward pass."),
    device: opt.Device = "auto",
    threads: opt.Threads = 0,
    ext: opt.Ext = None,
    force: bool = typer.Option(False, "--force", help="Redo a complete output; replace one made with another model or options."),
    old_size: Annotated[int | None, old_spelling("--size", "--lr-size")] = None,
    old_s: Annotated[int | None, old_spelling("-s", "--lr-size")] = None,
    old_method: Annotated[str | None, old_spelling("--method", "--down-method")] = None,
) -> None:
    """Super-resolve a folder's faces with an SR run (writes sr/NAME/<size>px/ and a contact sheet)."""
    size = prefer("sr", size, old_size, new_flag="--lr-size", old_flag="--size", default=16, why="--size is a face's full size in align, quality and make-bin")
    size = prefer("sr", size, old_s, new_flag="--lr-size", old_flag="-s", default=16, why="-s is --sizes in degrade and eval")
    method = prefer("sr", method, old_method, new_flag="--down-method", old_flag="--method", default="bicubic",
                    why="--method is the fine-tuning method in lrfr finetune")
    import torch

    from ..sr.files import contact_sheet, super_resolve_tree
    from ..sr.infer import load_sr_run

    st = state()
    ws = workspace()
    check_choice(method, METHODS, "--down-method")
    src = resolve_input(src, ws.root)
    srm = load_sr_run(model, ws.root, flag="--model")
    name = out or src.name
    images = list_images(src, parse_exts(ext))
    if not images:
        raise LrfrError(f"{src}: no images found (looked for {', '.join(parse_exts(ext))} recursively)")
    if srm.sizes_outside_training([size]):
        st.warn(f"runs/{srm.name} was trained at {','.join(map(str, srm.sizes))} px; applying it at {size} px")
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    ws.ensure_writable()
    rels = [p.relative_to(src).as_posix() for p in images]
    spec = DegradeSpec(size=size, method=method)
    art = ws.artifact("sr", name, f"{size}px")
    options = {"sr": srm.describe() | {"validation": None}, "degradation": spec.to_dict(), "format": "png", "sheet": sheet}
    job = ArtifactJob("sr", force=force, name=name, size=size, path=str(art.path))
    sheet_path = art.path.parent / f"contact_{size}px.png"
    with job.claim(art, options, {"src": fingerprint_tree(src, images)}, up_to_date=lambda c: f"sr/{name}/{size}px: {c.get('images')} faces") as run:
        if run.skipped:
            return
        with st.progress(f"super-resolve {size} px", total=len(rels)) as progress:
            res = super_resolve_tree(src, rels, art.path, srm.module, spec, device=dev, batch=batch_size, progress=progress)
        sheet_stats = None
        if sheet:
            pick = [rels[i] for i in np.unique(np.linspace(0, len(rels) - 1, min(sheet, len(rels))).round().astype(int))
                    if rels[i] not in {r for r, _ in res.failures}]
            if pick:
                sheet_stats = contact_sheet(src, pick, srm.module, spec, sheet_path, device=dev,
                                            title=f"runs/{srm.name} ({srm.arch}, trained at {','.join(map(str, srm.sizes))} px) on {src.name} at {size} px")
        counts = {"images": len(rels), "written": res.written[size], "already_present": res.existing[size], "failed": len(res.failures),
                  "failures": failure_lines(res.failures), "contact_sheet": str(sheet_path) if sheet_stats else None,
                  "sheet_psnr": sheet_stats}
        run.record(**counts)
    job.warn_failures(res.failures, "image(s) could not be read and were skipped")
    secs, _ = job.clock(len(rels))
    where = f"; contact sheet → {sheet_path}" if sheet_stats else ""
    job.done(f"[green]super-resolved[/green] {res.written[size]} faces at {size} px with runs/{srm.name} ({res.existing[size]} already there, "
             f"{len(res.failures)} failed) in {secs:.1f} s → {art.path}{where}", {"seconds": round(secs, 3), **counts})


def register(app: typer.Typer) -> None:
    app.command("sr")(sr_cmd)
