"""``lrfr degrade``: low-resolution copies of an image tree, one mirrored tree per size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from PIL import Image

from ..data.degrade import DegradeSpec, parse_sizes
from ..data.degrade_files import FORMATS, degrade_tree
from ..data.filters import METHODS
from ..data.images import list_images, parse_exts
from ..errors import LrfrError
from ..registry import check_choice
from ..workspace import fingerprint_tree
from . import _options as opt
from ._artifact_job import ArtifactJob, failure_lines, failure_rows, write_failures_csv
from ._common import handle_errors, resolve_input, state, workspace
from ._deprecated import old_spelling, prefer


@handle_errors
def degrade(
    src: Path = typer.Argument(..., help="Folder of images (any tree; mirrored), or a workspace artifact such as aligned/NAME."),
    sizes: str = typer.Option("8,12,16,20", "--sizes", "-s", help="Comma-separated low-resolution heights in pixels."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Output name: <workspace>/degraded/NAME/<size>px/ (default: SRC's folder name)."),
    method: opt.DownMethod = "bicubic",
    blur: opt.Blur = 0.0,
    noise: opt.Noise = 0.0,
    jpeg: opt.Jpeg = None,
    upsample: bool = typer.Option(True, "--upsample/--no-upsample", help="Up-sample back to the source size with bicubic interpolation (what a 112x112 network sees), or keep the small image."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    fmt: str = typer.Option("png", "--format", help="Output format: png (lossless, default) or jpg (quality 95; adds its own compression)."),
    workers: int = typer.Option(0, "--workers", "-j", min=0, help="Worker processes; 0 = all cores."),
    ext: opt.Ext = None,
    force: bool = typer.Option(False, "--force", help="Redo sizes that are already complete; replace ones made with other options."),
    old_method: Annotated[str | None, old_spelling("--method", "--down-method")] = None,
    old_m: Annotated[str | None, old_spelling("-m", "--down-method")] = None,
) -> None:
    """Down-sample every image to each size (then optionally back up), resumably, on all cores."""
    method = prefer("degrade", method, old_method, new_flag="--down-method", old_flag="--method", default="bicubic",
                    why="--method is the fine-tuning method in lrfr finetune")
    method = prefer("degrade", method, old_m, new_flag="--down-method", old_flag="-m", default="bicubic",
                    why="-m is --model in the other commands")
    st = state()
    ws = workspace()
    check_choice(method, METHODS, "--down-method")
    check_choice(fmt, FORMATS, "--format")
    size_list = parse_sizes(sizes)
    specs = [DegradeSpec(size=s, method=method, blur=blur, noise=noise, jpeg=jpeg, upsample=upsample) for s in size_list]
    src = resolve_input(src, ws.root)
    name = name or src.name
    images = list_images(src, parse_exts(ext))
    if not images:
        raise LrfrError(f"{src}: no images found (looked for {', '.join(parse_exts(ext))} recursively)")
    h = _first_height(images)
    if h is not None and max(size_list) > h:
        raise LrfrError(f"--sizes: {max(size_list)}px is larger than the source images ({h}px high)")
    ws.ensure_writable()
    rels = [p.relative_to(src).as_posix() for p in images]
    inputs = {"src": fingerprint_tree(src, images)}
    arts = [ws.artifact("degraded", name, f"{spec.size}px") for spec in specs]
    job = ArtifactJob("degrade", force=force, name=name, path=str(ws.root / "degraded" / name))
    with job.claim_each([(art, {**spec.to_dict(), "seed": seed, "format": fmt}) for spec, art in zip(specs, arts)], inputs) as runs:
        todo = [(spec, art, run) for spec, art, run in zip(specs, arts, runs) if not run.skipped]
        if not todo:
            job.up_to_date(f"degraded/{name}: sizes {','.join(map(str, size_list))} already complete", {"sizes": size_list, "images": len(images)})
            return
        with st.progress(f"degrade {len(todo)} size(s)", total=len(images)) as progress:
            res = degrade_tree(src, rels, [(spec, art.path) for spec, art, _ in todo], seed=seed, fmt=fmt, workers=workers or None, progress=progress)
        for spec, art, run in todo:
            write_failures_csv(art.path, res.failures)
            run.record(
                images=len(images),
                written=res.written[spec.size],
                already_present=res.existing[spec.size],
                failed=len(res.failures),
                failures=failure_lines(res.failures),
                description=spec.describe(),
            )
    seconds, rate = job.clock(len(images))
    job.warn_failures(res.failures, "image(s) could not be read and were skipped (listed in failures.csv)")
    sizes_txt = ",".join(str(s.size) for s, _, _ in todo)
    job.done(
        f"[green]degraded[/green] {len(images)} images to {sizes_txt} px ({todo[0][0].describe().split(', ', 1)[1]}) "
        f"in {seconds:.1f} s ({rate:,.0f} img/s), {len(res.failures)} failed → {ws.root / 'degraded' / name}",
        {
            "sizes": [s.size for s, _, _ in todo],
            "skipped_sizes": [spec.size for spec, run in zip(specs, runs) if run.skipped],
            "images": len(images),
            "written": sum(res.written.values()),
            "already_present": sum(res.existing.values()),
            "failed": len(res.failures),
            "failures": failure_rows(res.failures),
            "seconds": round(seconds, 3),
            "images_per_s": round(rate, 2),
            "degradation": {str(s.size): s.describe() for s, _, _ in todo},
        },
    )


def _first_height(images: list[Path]) -> int | None:
    for p in images[:20]:
        try:
            with Image.open(p) as im:
                return im.size[1]
        except Exception:  # noqa: BLE001 - unreadable files are reported later, per image
            continue
    return None


def register(app: typer.Typer) -> None:
    app.command("degrade")(degrade)
