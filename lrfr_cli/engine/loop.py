"""The training loop shared by ``train`` and ``finetune``: one linear loop, every recipe an option.

A *task* is an ``nn.Module`` whose ``forward(x, labels)`` returns the scalar loss and whose
``checkpoint_modules()`` names what goes into a checkpoint (``{"model": backbone, "head": head}``
for classification). The loop owns everything else: DDP wrapping, precision, the optimiser step,
schedules, metrics, checkpoints, resume, NaN stop and per-epoch validation.

Determinism contract (CPU): the data order is a function of ``(seed, epoch)`` (see
:class:`~lrfr_cli.data.datasets.EpochBatchSampler`), the schedule a function of the step, and a
checkpoint holds every other piece of state, so a run killed and resumed ends with the same
weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import EpochBatchSampler, FaceDataset
from ..errors import LrfrError
from ..models import preprocess
from ..workspace import atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint
from .device import autocast, grad_scaler
from .distributed import DistInfo, all_reduce_mean, barrier
from .optim import LRSchedule, build_optimizer
from .seed import rng_state, set_rng_state

LAST = "last.pt"
BEST = "best.pt"


class NonFiniteLoss(LrfrError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class ClassifierTask(nn.Module):
    """Backbone + margin head: ``loss = CE(head(backbone(x), y))``."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(self.model(x), labels)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "head": self.head}

    def on_step(self, step: int) -> None:
        if hasattr(self.head, "step"):
            self.head.step(step)


@dataclass
class LoopConfig:
    """Everything that changes what the loop computes (part of the run's identity)."""

    global_batch: int = 128
    epochs: int | None = None
    max_steps: int | None = None
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr: float = 0.0
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    clip_grad: float | None = None
    checkpoint_every: int = 500
    seed: int = 0
    flip: bool = True
    log_every: int = 10
    workers: int = 0  # not part of the identity: any value gives the same batches
    extra: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("workers")
        d.pop("log_every")
        return d


@dataclass
class FitResult:
    step: int
    epoch: int
    total_steps: int
    loss: float | None
    first_loss: float | None
    seconds: float
    images_per_s: float
    resumed_from: int | None
    best: dict[str, float] | None
    last_val: dict[str, float] | None


def plan_steps(n_images: int, cfg: LoopConfig) -> tuple[int, int]:
    """(steps per epoch, total steps) from --epochs / --max-steps (the smaller wins)."""
    per_epoch = n_images // cfg.global_batch
    if per_epoch < 1:
        raise LrfrError(f"the dataset has {n_images} images, fewer than --batch-size {cfg.global_batch}; lower --batch-size")
    if cfg.epochs is None and cfg.max_steps is None:
        raise LrfrError("give --epochs or --max-steps")
    totals = []
    if cfg.epochs is not None:
        totals.append(cfg.epochs * per_epoch)
    if cfg.max_steps is not None:
        totals.append(cfg.max_steps)
    total = min(totals)
    if total < 1:
        raise LrfrError("nothing to train: --epochs/--max-steps must be >= 1")
    return per_epoch, total


def _unwrap_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() if v.is_floating_point() else v for k, v in module.state_dict().items()}


def fit(
    task: nn.Module,
    dataset: FaceDataset,
    cfg: LoopConfig,
    run_dir: Path,
    *,
    device: torch.device,
    info: DistInfo,
    config: dict[str, Any],
    resume: bool = False,
    progress: Callable[..., None] | None = None,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train ``task`` on ``dataset``; writes ``checkpoints/``, ``metrics.jsonl`` (rank 0 only)."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    main = info.is_main

    def say(msg: str) -> None:
        if main and log:
            log(msg)

    per_epoch, total = plan_steps(len(dataset), cfg)
    n_epochs = math.ceil(total / per_epoch)
    task.to(device)
    if cfg.channels_last:
        task.to(memory_format=torch.channels_last)
    modules = task.checkpoint_modules()
    optimizer = build_optimizer(cfg.optimizer, [task], cfg.lr, cfg.momentum, cfg.weight_decay)
    schedule = LRSchedule(cfg.lr, total, min(cfg.warmup_steps, total), cfg.schedule, cfg.min_lr)
    scaler = grad_scaler(device, cfg.precision)

    step, epoch, batch_in_epoch = 0, 0, 0
    resumed_from = None
    best: dict[str, float] | None = None
    last_path = ckpt_dir / LAST
    if resume:
        if not last_path.is_file():
            raise LrfrError(f"--resume: no checkpoint at {last_path}; start the run without --resume")
        ck = load_checkpoint(last_path, map_location=device)
        missing = [k for k in (*modules, "optimizer", "step") if k not in ck]
        if missing:
            raise LrfrError(f"{last_path}: not an lrfr training checkpoint (missing {', '.join(missing)})")
        for name, mod in modules.items():
            mod.load_state_dict(ck[name])
        optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        step, epoch, batch_in_epoch = int(ck["step"]), int(ck.get("epoch", 0)), int(ck.get("batch_in_epoch", 0))
        best = ck.get("best")
        if "rng" in ck:
            set_rng_state(ck["rng"])
        resumed_from = step
        if main and metrics_path.exists():  # drop metrics logged after the checkpoint (they will be redone)
            kept = [ln for ln in metrics_path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
            atomic_write_text(metrics_path, "".join(ln + "\n" for ln in kept))
        say(f"resumed from {last_path} at step {step} (epoch {epoch}, batch {batch_in_epoch})")

    net: nn.Module = task
    if info.is_distributed:
        net = nn.parallel.DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]

    def checkpoint(path: Path, ep: int, bie: int) -> None:
        if not main:
            return
        state: dict[str, Any] = {name: _unwrap_state(mod) for name, mod in modules.items()}
        state.update(
            optimizer=optimizer.state_dict(),
            scheduler=dict(schedule.state_dict(), step=step),
            scaler=scaler.state_dict() if scaler.is_enabled() else {},
            step=step,
            epoch=ep,
            batch_in_epoch=bie,
            rng=rng_state(),
            config=config,
            best=best,
        )
        save_checkpoint(path, state)

    def run_validation(ep: int) -> dict[str, float] | None:
        nonlocal best
        if validate is None:
            return None
        res = None
        if main:
            res = validate(modules["model"])
            say(f"validation after epoch {ep}: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()))
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps({"step": step, "epoch": ep, **res}) + "\n")
            if best is None or res["val_acc"] > best["val_acc"]:
                best = {"val_acc": res["val_acc"], "step": step, "epoch": ep}
                checkpoint(ckpt_dir / BEST, ep, per_epoch)
        barrier()
        return res

    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    task.train()
    t_start = time.time()
    win_t, win_imgs, imgs_total = time.time(), 0, 0
    loss_val: float | None = None
    first_loss: float | None = None
    last_val = None
    window: list[float] = []
    if progress:
        progress(step, total=total)
    while step < total:
        sampler = EpochBatchSampler(len(dataset), cfg.global_batch, cfg.seed, epoch, info.rank, info.world_size, cfg.flip, start=batch_in_epoch)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if cfg.workers > 0 else None,
        )
        for images, labels in loader:
            lr = schedule(step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x = preprocess(images.to(device, non_blocking=True))
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, cfg.precision):
                loss = net(x, labels)
            mean_loss = all_reduce_mean(loss.detach().float())
            loss_val = float(mean_loss)
            if not math.isfinite(loss_val):
                msg = (
                    f"loss became {loss_val} at step {step + 1}; stopped. The last good checkpoint "
                    f"({last_path if last_path.exists() else 'none yet'}) is kept: re-run with a lower --lr (or --clip-grad, or --precision fp32) and --resume --force to continue from it"
                )
                say(msg)
                if main:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps({"step": step + 1, "epoch": epoch, "loss": str(loss_val), "event": "non-finite loss"}) + "\n")
                raise NonFiniteLoss(msg)
            if first_loss is None:
                first_loss = loss_val
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            batch_in_epoch += 1
            if hasattr(task, "on_step"):
                task.on_step(step)
            n_img = cfg.global_batch
            win_imgs += n_img
            imgs_total += n_img
            window.append(loss_val)
            if step % cfg.log_every == 0 or step == total:
                now = time.time()
                ips = win_imgs / max(now - win_t, 1e-9)
                if main:
                    rec = {"step": step, "epoch": epoch, "loss": sum(window) / len(window), "lr": lr, "images_per_s": round(ips, 2), "time": round(now - t_start, 3)}
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                win_t, win_imgs, window = now, 0, []
            if progress:
                progress(1, loss=loss_val, lr=lr, epoch=epoch)
            if step % cfg.checkpoint_every == 0 and step < total:
                checkpoint(last_path, epoch, batch_in_epoch)
            if step >= total:
                break
        if batch_in_epoch >= per_epoch:
            epoch += 1
            batch_in_epoch = 0
            last_val = run_validation(epoch - 1)
            if step < total:
                checkpoint(last_path, epoch, 0)
    if batch_in_epoch > 0:  # stopped mid-epoch by --max-steps: validate what we have
        last_val = run_validation(epoch)
    checkpoint(last_path, epoch, batch_in_epoch)
    barrier()
    seconds = time.time() - t_start
    return FitResult(
        step=step,
        epoch=epoch,
        total_steps=total,
        loss=loss_val,
        first_loss=first_loss,
        seconds=seconds,
        images_per_s=imgs_total / max(seconds, 1e-9),
        resumed_from=resumed_from,
        best=best,
        last_val=last_val,
    )
