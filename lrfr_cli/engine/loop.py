"""The training loop shared by ``train``, ``finetune`` and super-resolution training.

One linear loop, many tasks (:mod:`.tasks`). The task computes a step's loss from the raw batch;
the loop owns everything else: the sampler, DDP wrapping, precision, the optimiser step over the
task's parameter groups, the learning-rate schedule, ``metrics.jsonl`` (the loss and the task's
named terms), checkpoints, resume, the NaN stop and per-epoch validation on the metric the
:class:`~.validation.Validation` names. Its pieces live beside it: :class:`~.checkpointer.Checkpointer`
(save, restore), :class:`~.metrics_log.MetricsLog` (the one writer of ``metrics.jsonl``),
:class:`~.validation.Validator` (when to validate, ``best.pt``); how a task's state spreads over
the ranks (DDP, optimiser state, gradient norm) is the task's :meth:`~.tasks.Task.state_hooks`.

Determinism contract (CPU): the data order is a function of ``(seed, epoch)`` (the samplers in
:mod:`lrfr_cli.data.samplers`), on-device randomness a function of ``(seed, step, rank)``
(:attr:`StepContext.generator`), the schedule a function of the step, and a checkpoint holds
every other piece of state (weights, buffers, optimiser, scaler, global RNG states), so a run
killed and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.samplers import batches_per_epoch, build_sampler
from ..errors import LrfrError
from .checkpointer import LAST, Checkpointer, RunState
from .device import autocast, grad_scaler
from .distributed import DistInfo, all_reduce_mean, barrier
from .metrics_log import MetricsLog
from .optim import LRSchedule, build_optimizer
from .signals import StopRequest, quiet_worker_init
from .tasks import Batch, StateHooks, StepContext, StepOutput, Task
from .validation import Validation, Validator


class NonFiniteLoss(LrfrError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


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
    sampler: str = "epoch"
    images_per_identity: int = 4  # the pk sampler's K
    log_every: int = 10
    workers: int = 0  # not part of the identity: any value gives the same batches

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("workers")
        d.pop("log_every")
        if self.sampler != "pk":
            d.pop("images_per_identity")  # meaningless for other samplers: not part of their identity
        return d

    def sampler_opts(self) -> dict[str, Any]:
        return {"k": self.images_per_identity} if self.sampler == "pk" else {}


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
    best: dict[str, Any] | None
    last_val: dict[str, float] | None
    steps_per_epoch: int = 1
    terms: dict[str, float] | None = None  # the last step's named loss terms


def plan_steps(per_epoch: int, cfg: LoopConfig) -> int:
    """Total steps from --epochs / --max-steps (the smaller wins), given batches per epoch."""
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
    return total


def _to_batch(item: Any, device: torch.device) -> Batch:
    """A loader item (``(images, labels, ...)`` tuple or a dict of fields) as a Batch on ``device``."""
    if isinstance(item, dict):
        fields = item
    else:
        images, labels, *rest = item
        if rest:
            raise LrfrError("a dataset item with more than (image, label) must be a dict of named fields")
        fields = {"images": images, "labels": labels}
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in fields.items()}


def _sampler_labels(dataset: Dataset, cfg: LoopConfig) -> np.ndarray:
    """The labels the sampler draws from (zeros for the epoch sampler when the data has none)."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        if cfg.sampler != "epoch":
            raise LrfrError(f"--sampler {cfg.sampler} needs a dataset with labels")
        labels = np.zeros(len(dataset), dtype=np.int64)  # type: ignore[arg-type]
    return np.asarray(labels)


def _epoch_loader(dataset: Dataset, labels: np.ndarray, cfg: LoopConfig, state: RunState, info: DistInfo, device: torch.device) -> DataLoader:
    """The rest of ``state.epoch``'s batches for this rank, from ``state.batch_in_epoch`` on."""
    sampler = build_sampler(cfg.sampler, labels, cfg.global_batch, cfg.seed, state.epoch, info.rank, info.world_size, cfg.flip, start=state.batch_in_epoch, **cfg.sampler_opts())
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if cfg.workers > 0 else None,
        worker_init_fn=quiet_worker_init if cfg.workers > 0 else None,
    )


def _wrap(task: Task, hooks: StateHooks, info: DistInfo, device: torch.device, compile: bool) -> nn.Module:
    """The module the steps call: DDP around the task when distributed (minus what the hooks keep
    out of it), compiled on request."""
    net: nn.Module = task
    if info.is_distributed:
        hooks.keep_out_of_ddp(task)
        net = nn.parallel.DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return net


def _step_values(out: StepOutput, names: list[str], stop: StopRequest) -> list[float]:
    """``[loss, *terms]`` averaged over ranks. One reduction and one host sync per step; the
    Ctrl-C flag rides along, so every rank stops at the same step (see .signals), before this
    step's update: the last checkpoint is the state to resume."""
    loss = out.loss
    scalars = torch.stack([loss.detach().float().reshape(()), *(out.terms[k].detach().float().reshape(()) for k in names),
                           torch.tensor(float(stop.requested), device=loss.device)])
    values = all_reduce_mean(scalars).tolist()
    if values.pop() > 0:
        raise KeyboardInterrupt
    return values


def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[torch.Tensor], clip: float | None, hooks: StateHooks) -> None:
    """Backward and one optimiser step (through the scaler; gradients clipped to ``clip``)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip:
        scaler.unscale_(optimizer)
        hooks.clip_grad_norm(params, clip)  # the whole model's norm, also when the head is sharded
    scaler.step(optimizer)
    scaler.update()


def _non_finite(loss: float, state: RunState, last: Path, metrics: MetricsLog, say: Callable[[str], None]) -> NonFiniteLoss:
    """Log the NaN stop (log and ``metrics.jsonl``) and the error that ends the run."""
    msg = (
        f"loss became {loss} at step {state.step + 1}; stopped. The last good checkpoint "
        f"({last if last.exists() else 'none yet'}) is kept: re-run with a lower --lr (or --clip-grad, or --precision fp32) and --resume --force to continue from it"
    )
    say(msg)
    metrics.write_non_finite(state.step + 1, state.epoch, loss)
    return NonFiniteLoss(msg)


def fit(*args: Any, **kwargs: Any) -> FitResult:
    """Train (see :func:`_fit` for the arguments) with Ctrl-C turned into a stop at the next step."""
    with StopRequest() as stop:
        return _fit(*args, stop=stop, **kwargs)


def _fit(
    task: Task,
    dataset: Dataset,
    cfg: LoopConfig,
    run_dir: Path,
    *,
    device: torch.device,
    info: DistInfo,
    config: dict[str, Any],
    resume: bool = False,
    progress: Callable[..., None] | None = None,
    validation: Validation | None = None,
    log: Callable[[str], None] | None = None,
    stop: StopRequest | None = None,
) -> FitResult:
    """Train ``task`` on ``dataset``; writes ``checkpoints/``, ``metrics.jsonl`` (rank 0 only).

    ``dataset`` yields ``(uint8 image, label)`` or dicts of fields (``images``, ``labels``, ...)
    for the codes the sampler gives; it needs ``labels`` (an array) for the ``pk`` sampler.
    """
    stop = stop or StopRequest()  # not entered: never requested
    run_dir, main = Path(run_dir), info.is_main
    say: Callable[[str], None] = log if main and log else lambda msg: None

    labels = _sampler_labels(dataset, cfg)
    per_epoch = batches_per_epoch(cfg.sampler, labels, cfg.global_batch, info.world_size, **cfg.sampler_opts())
    total = plan_steps(per_epoch, cfg)
    task.to(device)
    if cfg.channels_last:
        task.to(memory_format=torch.channels_last)
    hooks = task.state_hooks()
    optimizer = build_optimizer(cfg.optimizer, task.param_groups(cfg.weight_decay), cfg.lr, cfg.momentum)
    lr_scales = [float(g.get("lr_scale", 1.0)) for g in optimizer.param_groups]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    schedule = LRSchedule(cfg.lr, total, min(cfg.warmup_steps, total), cfg.schedule, cfg.min_lr)
    scaler = grad_scaler(device, cfg.precision)
    ckpt = Checkpointer(run_dir / "checkpoints", task.checkpoint_modules(), optimizer, schedule, scaler, hooks, config=config, main=main)
    metrics = MetricsLog(run_dir / "metrics.jsonl", main)
    state, resumed_from = RunState(), None
    if resume:
        state = ckpt.restore()
        resumed_from = state.step
        metrics.drop_after(state.step)  # the lines after the checkpoint will be redone
        say(f"resumed from {ckpt.last} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    net = _wrap(task, hooks, info, device, cfg.compile)
    validate = Validator(validation, task, state, ckpt, metrics, say, main=main, per_epoch=per_epoch)
    if main:
        ckpt.folder.mkdir(parents=True, exist_ok=True)
    task.train()
    metrics.start_clock()
    loss_val: float | None = None
    first_loss: float | None = None
    last_terms: dict[str, float] | None = None
    last_val = None
    if progress:
        progress(state.step, total=total)
    while state.step < total:
        for item in _epoch_loader(dataset, labels, cfg, state, info, device):
            lr = schedule(state.step)
            for g, scale in zip(optimizer.param_groups, lr_scales):
                g["lr"] = lr * scale
            ctx = StepContext(state.step, state.epoch, cfg.seed, device, info.rank, info.world_size, cfg.precision, cfg.channels_last)
            with autocast(device, cfg.precision):
                out = net(_to_batch(item, device), ctx)
            if not isinstance(out, StepOutput):
                raise TypeError(f"{type(task).__name__}.forward must return a StepOutput, got {type(out).__name__}")
            names = metrics.term_names(out.terms, type(task).__name__)
            values = _step_values(out, names, stop)
            loss_val = values[0]
            if not math.isfinite(loss_val):
                raise _non_finite(loss_val, state, ckpt.last, metrics, say)
            if first_loss is None:
                first_loss = loss_val
            _update(out.loss, optimizer, scaler, params, cfg.clip_grad, hooks)
            state.step += 1
            state.batch_in_epoch += 1
            task.on_step(state.step)
            metrics.add_step(values, cfg.global_batch)
            if state.step % cfg.log_every == 0 or state.step == total:
                metrics.write_steps(state.step, state.epoch, lr)
            last_terms = dict(zip(names, values[1:]))
            if progress:
                progress(1, loss=loss_val, lr=lr, epoch=state.epoch)
            if state.step % cfg.checkpoint_every == 0 and state.step < total:
                ckpt.save(LAST, state)
            if validate.due_at_step(state.step, total):
                last_val = validate(state.epoch, state.batch_in_epoch)
            if state.step >= total:
                break
        if state.batch_in_epoch >= per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
            if validate.due_at_epoch_end():
                last_val = validate(state.epoch - 1)
            if state.step < total:
                ckpt.save(LAST, state)
    if state.batch_in_epoch > 0 or validate.every:  # mid-epoch stop, or a step schedule: validate the end
        last_val = validate(state.epoch, state.batch_in_epoch) or last_val
    ckpt.save(LAST, state)
    barrier()
    seconds = time.time() - metrics.start
    return FitResult(step=state.step, epoch=state.epoch, total_steps=total, loss=loss_val, first_loss=first_loss, seconds=seconds,
                     images_per_s=(state.step - (resumed_from or 0)) * cfg.global_batch / max(seconds, 1e-9), resumed_from=resumed_from,
                     best=state.best, last_val=last_val, steps_per_epoch=per_epoch, terms=last_terms)


__all__ = ["FitResult", "LoopConfig", "NonFiniteLoss", "fit", "plan_steps"]
