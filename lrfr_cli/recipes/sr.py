"""``lrfr train --task sr``: a face super-resolution network (the SR options and the run are
built in :mod:`lrfr_cli.sr.recipe`; this adds the shared loop options and the summary)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.datasets import resolve_training_data
from ..engine.runner import RunOutcome, TrainingRun
from ..sr.recipe import SROptions, sr_training_run
from .classify import TrainArgs, lr_sizes
from .common import RunSummary


def sr_validation_text(out: RunOutcome) -> str:
    res = out.result
    assert res is not None
    if res.best and "val_psnr" in res.best:
        val = f", best val PSNR {res.best['val_psnr']:.2f} dB"
        if res.last_val and "val_bicubic_psnr" in res.last_val:
            val += f" (bicubic {res.last_val['val_bicubic_psnr']:.2f} dB)"
        return val
    return ", no validation (no val.txt beside the list)"


def sr_run(a: TrainArgs, ws_root: Path, device: torch.device, precision: str) -> tuple[TrainingRun, RunSummary]:
    cfg = a.loop_config(precision)
    opts = SROptions(a.arch, tuple(lr_sizes(a.lr_sizes)), a.sr_loss.lower(), a.perceptual, a.perceptual_weight,
                     a.adversarial, a.disc_lr_scale, a.sr_val_images, a.sr_patch)
    ts = resolve_training_data(a.data, a.data_root, ws_root, allow_outside_root=a.allow_outside_root)
    spec = sr_training_run(ts=ts, cfg=cfg, name=a.run_name or f"sr-{a.arch.lower()}", opts=opts, ws_root=ws_root,
                           device=device, cache=a.cache, resume=a.resume, force=a.force, threads=a.threads)
    return spec, RunSummary("train", kind="SR ", loss_digits=4, speed=False, record={"task": "sr"}, validation=sr_validation_text)
