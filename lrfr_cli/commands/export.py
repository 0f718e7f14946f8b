"""``lrfr export``: a model as a verified ONNX embedding graph → ``exports/NAME/model.onnx``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ..errors import LrfrError
from ..registry import check_choice
from . import _model_options as mopt
from . import _options as opt
from ._artifact_job import ArtifactJob
from ._common import handle_errors, state, workspace

FORMATS = ("onnx",)


@handle_errors
def export_cmd(
    model: str = typer.Option(..., "--model", "-m", help="runs/RUN (or RUN) from `lrfr train`/`finetune`, an external checkpoint file (.pt/.pth/.ckpt: insightface or AdaFace state dict), or an .onnx file (re-exported with lrfr's input and metadata)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Output format: onnx (float32 input, (pixel - 127.5) / 127.5, dynamic batch, preprocessing in metadata_props)."),
    layout: str = typer.Option("nchw", "--layout", help="Input layout of the written graph: nchw (N×3×112×112, insightface's) or nhwc (N×112×112×3); recorded in the metadata, which `lrfr eval --model` reads."),
    pixel_mean: opt.PixelMean = None,
    pixel_std: opt.PixelStd = None,
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the model here instead of exports/NAME/model.onnx (no manifest)."),
    backbone: mopt.CheckpointBackbone = None,
    checkpoint: opt.Checkpoint = "auto",
    channel_order: opt.ChannelOrder = "auto",
    check_images: Path | None = typer.Option(None, "--check-images", help="Aligned faces to verify onnxruntime against PyTorch on (default $LRFR_DATA/celeba_subset/images)."),
    check_count: int = typer.Option(16, "--check-count", min=2, help="How many faces the check uses (spread over the folder)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Verify onnxruntime's L2-normalised embeddings equal PyTorch's within 1e-4 before writing (--no-check: write unverified, said so in the metadata)."),
    opset: int = typer.Option(17, "--opset", min=11, max=21, help="ONNX opset version."),
    force: bool = typer.Option(False, "--force", help="Export again even if exports/NAME holds this checkpoint's export."),
) -> None:
    """Export a model to ONNX (dynamic batch, preprocessing in its metadata), checked against PyTorch.

    Examples: lrfr export -m runs/RUN · lrfr export -m ms1mv3_arcface_r50.pth -o r50.onnx ·
    lrfr export -m adaface_ir101_webface12m.ckpt (channel order bgr, recorded in the metadata)
    """
    st = state()
    if fmt.strip().lower() not in FORMATS:
        raise LrfrError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    ws = workspace()
    # Heavy imports after option checks: a typo should not wait for torch.
    from ..embed import resolve_model
    from ..export import TOLERANCE, export, load_faces
    from ..models.onnx_export import LAYOUTS
    from ..workspace import atomic_write_bytes

    layout = layout.strip().lower()
    check_choice(layout, LAYOUTS, "--layout")
    loaded = resolve_model(model, ws.root, backbone=backbone, checkpoint=checkpoint, channel_order=channel_order,
                           pixel_mean=pixel_mean, pixel_std=pixel_std)
    faces = None
    if check:
        folder = check_images or Path(os.environ.get("LRFR_DATA", "data")).expanduser() / "celeba_subset" / "images"
        faces = load_faces(folder.expanduser(), check_count, loaded.input_size)

    summary = {"model": loaded.describe(), "format": "onnx", "opset": opset, "layout": layout}
    if out is not None:
        onnx_bytes, parity = export(loaded, faces, opset, layout)
        atomic_write_bytes(out, onnx_bytes)
        path, skipped = out, False
    else:
        ws.ensure_writable()
        art = ws.artifact("exports", loaded.name)
        options = {"format": "onnx", "opset": opset, "channel_order": loaded.channel_order, "backbone": loaded.backbone, "check": check,
                   **({"layout": layout} if layout != "nchw" else {}), **({"input_contract": loaded.contract} if loaded.contract else {})}
        with ArtifactJob("export", force=force).claim(art, options, {"checkpoint_sha1": loaded.sha1}) as run:
            path, skipped, parity = art.path / "model.onnx", run.skipped, None
            if not run.skipped:
                onnx_bytes, parity = export(loaded, faces, opset, layout)
                atomic_write_bytes(path, onnx_bytes)
                run.record(bytes=len(onnx_bytes), parity=parity.as_dict() if parity else None, model=loaded.describe())
    summary.update(path=str(path), skipped=skipped, parity=parity.as_dict() if parity else None)
    if skipped:
        line = f"[green]up to date[/green] {path} (same checkpoint and options; --force to redo)"
    else:
        checked = (f"onnxruntime = PyTorch within {parity.max_abs:.1e} (<= {TOLERANCE:g}) on {parity.faces} faces"
                   if parity else "[yellow]not checked[/yellow]")
        line = f"[green]exported[/green] {loaded.name} ({loaded.backbone}, {loaded.channel_order}, {layout.upper()}) → {path}, {path.stat().st_size / 2**20:.1f} MiB; {checked}"
    st.summary(line, summary)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
