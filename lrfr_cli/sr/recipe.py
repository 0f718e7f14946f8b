"""``lrfr train --task sr``: the options of a super-resolution run → a :class:`TrainingRun`.

``recipes/sr.py`` builds the shared loop options and hands the SR ones here;
the runner (:func:`lrfr_cli.engine.runner.run_training`) then does what it does for recognition
runs: artifact, resume, DDP, checkpoints, per-epoch validation, summary counts.

Validation: when ``--data`` is a list made by ``lrfr make-list --val-fraction F`` the run scores
PSNR/SSIM on the list's ``val.txt`` (held-out images; at most ``val_images`` of them, spread
evenly over the file so every identity block is represented) after every epoch and keeps
``best.pt`` by ``val_psnr``. Without a ``val.txt`` the run trains without validation and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.crb import check_crb_options
from ..data.datasets import TrainingSet, load_face
from ..data.lists import read_list_lines
from ..engine.loop import LoopConfig
from ..engine.runner import TrainingRun
from ..engine.tasks import Task
from ..errors import LrfrError
from ..models import INPUT_SIZE
from ..models.sr import SR_ARCHS, Discriminator, build_sr
from ..workspace import fingerprint_file
from .infer import SR_KIND, sr_validation
from .task import SR_LOSSES, SRTask


@dataclass
class SROptions:
    """The SR-specific options of ``lrfr train`` (their ``--help`` lives in commands/train.py)."""

    arch: str = "srcnn"
    lr_sizes: tuple[int, ...] = (16,)
    loss: str = "l1"
    perceptual: str | None = None
    perceptual_weight: float = 0.1
    adversarial: float = 0.0
    disc_lr_scale: float = 1.0
    val_images: int = 256
    patch: int = 48


def check_sr_options(o: SROptions) -> SROptions:
    """One-line errors for bad SR options, before any data is read."""
    arch, loss = SR_ARCHS.key(o.arch), SR_LOSSES.key(o.loss)
    sizes = check_crb_options(list(o.lr_sizes), "split", 1.0, height=INPUT_SIZE)
    if o.adversarial < 0 or o.perceptual_weight < 0:
        raise LrfrError("--adversarial and --perceptual-weight must be >= 0")
    if (o.adversarial > 0 or o.perceptual) and arch != "srresnet":
        raise LrfrError("--adversarial/--perceptual are the SRGAN recipe: use them with --arch srresnet")
    if o.val_images < 1:
        raise LrfrError("--sr-val-images must be >= 1")
    if o.patch < 0 or o.patch > INPUT_SIZE or (o.patch and o.patch < 16):
        raise LrfrError(f"--sr-patch {o.patch}: give 0 (whole faces) or a window of 16..{INPUT_SIZE} px")
    if arch == "srresnet" and o.patch % 4:
        raise LrfrError(f"--sr-patch {o.patch}: srresnet works on a 4-px grid; use a multiple of 4 (e.g. 48)")
    if o.perceptual and o.patch:
        raise LrfrError("--perceptual needs whole faces (the recogniser sees 112-px faces): add --sr-patch 0")
    return SROptions(arch, sizes, loss, o.perceptual, o.perceptual_weight, o.adversarial, o.disc_lr_scale, o.val_images, o.patch)


def val_faces(ts: TrainingSet, limit: int) -> tuple[torch.Tensor | None, Path | None]:
    """uint8 N×3×112×112 held-out faces from the list's ``val.txt`` (None when there is none)."""
    if ts.kind != "list":
        return None, None
    val = Path(ts.source).parent / "val.txt"
    if not val.is_file():
        return None, None
    rels = [rel for _, rel, _ in read_list_lines(val)]
    if not rels:
        return None, None
    pick = np.unique(np.linspace(0, len(rels) - 1, min(limit, len(rels))).round().astype(int))
    imgs = np.stack([load_face(ts.root / rels[i]) for i in pick]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(imgs)), val


def sr_training_run(
    *, ts: TrainingSet, cfg: LoopConfig, name: str, opts: SROptions, ws_root: Path, device: torch.device,
    cache: bool, resume: bool, force: bool, threads: int,
) -> TrainingRun:
    """The :class:`TrainingRun` of an SR run (loads the perceptual recogniser and the val faces
    first, so a missing ``--perceptual`` run fails before the run folder is claimed)."""
    o = check_sr_options(opts)
    perceptual_module = None
    perceptual_info = None
    inputs: dict[str, Any] = {"data": ts.fingerprint}
    if o.perceptual:
        from ..embed.model import resolve_model

        spec = Path(o.perceptual).expanduser()
        if not (spec.exists() or (not spec.is_absolute() and ((ws_root / spec).is_dir() or (ws_root / "runs" / spec).is_dir()))):
            raise LrfrError(f"--perceptual {o.perceptual}: no such recognition run (looked in {ws_root / 'runs'}); "
                            "train one with `lrfr train` first or give a checkpoint file")
        try:
            rec = resolve_model(o.perceptual, ws_root)
        except LrfrError as e:
            raise LrfrError(f"--perceptual {o.perceptual}: {e}") from None
        perceptual_module = rec.module
        perceptual_info = {"run": rec.name, "checkpoint_sha1": rec.sha1, "backbone": rec.backbone, "weight": o.perceptual_weight}
        inputs["perceptual"] = {"checkpoint": str(rec.checkpoint), "sha1": rec.sha1}
    hr_val, val_file = val_faces(ts, o.val_images)
    if val_file is not None:
        inputs["val"] = fingerprint_file(val_file)
    config: dict[str, Any] = {
        "kind": SR_KIND,
        "arch": o.arch,
        "lr_sizes": list(o.lr_sizes),
        "degradation": "bicubic",
        "input": "LR face up-sampled back to 112 px (bicubic), RGB in [0, 1]; output 112 px",
        "sr_loss": o.loss,
        "patch": o.patch,
        "perceptual": perceptual_info,
        "adversarial": {"weight": o.adversarial, "disc_lr_scale": o.disc_lr_scale} if o.adversarial > 0 else None,
        "input_size": INPUT_SIZE,
        "data": ts.source,
        "data_kind": ts.kind,
        "images": len(ts),
        "val_images": int(hr_val.shape[0]) if hr_val is not None else 0,
        "loop": cfg.identity(),
    }
    options = {k: v for k, v in config.items() if k not in ("data", "images")}

    def build_task(_: TrainingSet) -> Task:
        disc = Discriminator() if o.adversarial > 0 else None
        return SRTask(build_sr(o.arch), o.lr_sizes, loss=o.loss, perceptual=perceptual_module, perceptual_weight=o.perceptual_weight,
                      discriminator=disc, adversarial_weight=o.adversarial, disc_lr_scale=o.disc_lr_scale, patch=o.patch)

    return TrainingRun(
        command="train", name=name, data=ts, cfg=cfg, config=config, options=options, inputs=inputs, build_task=build_task,
        validation=sr_validation(hr_val, o.lr_sizes, device) if hr_val is not None else None,
        cache=cache, resume=resume, force=force, threads=threads,
    )


__all__ = ["SROptions", "check_sr_options", "sr_training_run", "val_faces"]
