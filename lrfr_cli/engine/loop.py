"""The training loop shared by ``train``, ``finetune`` and super-resolution training.

One linear loop, many tasks (:mod:`.tasks`). The task computes a step's loss from the raw batch;
the loop owns everything else: the sampler, DDP wrapping, precision, the optimiser step over the
task's parameter groups, the learning-rate schedule, ``metrics.jsonl`` (the loss and the task's
named terms), checkpoints, resume, the NaN stop and per-epoch validation on the metric the
:class:`Validation` names.

Determinism contract (CPU): the data order is a function of ``(seed, epoch)`` (the samplers in
:mod:`lrfr_cli.data.samplers`), on-device randomness a function of ``(seed, step, rank)``
(:attr:`StepContext.generator`), the schedule a function of the step, and a checkpoint holds
every other piece of state (weights, buffers, optimiser, scaler, global RNG states), so a run
killed and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import json
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
from ..losses.sharded import (
    clip_grad_norm_,
    gather_optimizer_state,
    mark_ddp_ignored,
    shard_optimizer_state,
    sharded_modules,
)
from ..workspace import atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint
from .device import autocast, grad_scaler
from .distributed import DistInfo, all_reduce_mean, barrier, broadcast_object
from .optim import LRSchedule, build_optimizer
from .seed import rng_state, set_rng_state
from .signals import StopRequest, quiet_worker_init
from .tasks import Batch, ClassifierTask, StepContext, StepOutput, Task

LAST = "last.pt"
BEST = "best.pt"
_RESERVED = {"step", "epoch", "loss", "lr", "images_per_s", "time", "event"}


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
class Validation:
    """Validation after every epoch (or every ``every`` steps, and at the end): ``run(task)``
    returns metrics including ``metric``, which picks ``best.pt`` (higher is better unless
    ``higher_is_better=False``). Runs on rank 0 only."""

    run: Callable[[Task], dict[str, float]]
    metric: str = "val_acc"
    higher_is_better: bool = True
    every: int = 0  # steps between validations; 0 = at each epoch's end

    def better(self, value: float, best: dict[str, Any] | None) -> bool:
        if best is None or self.metric not in best:
            return True
        return value > best[self.metric] if self.higher_is_better else value < best[self.metric]


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


def _unwrap_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() if v.is_floating_point() else v for k, v in module.state_dict().items()}


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
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    main = info.is_main

    def say(msg: str) -> None:
        if main and log:
            log(msg)

    labels = getattr(dataset, "labels", None)
    if labels is None:
        if cfg.sampler != "epoch":
            raise LrfrError(f"--sampler {cfg.sampler} needs a dataset with labels")
        labels = np.zeros(len(dataset), dtype=np.int64)  # type: ignore[arg-type]
    labels = np.asarray(labels)
    per_epoch = batches_per_epoch(cfg.sampler, labels, cfg.global_batch, info.world_size, **cfg.sampler_opts())
    total = plan_steps(per_epoch, cfg)
    task.to(device)
    if cfg.channels_last:
        task.to(memory_format=torch.channels_last)
    modules = task.checkpoint_modules()
    # Sharded class weights (--classifier sharded): saving gathers them (and their optimiser
    # state) to rank 0, so every rank takes part in a checkpoint; loading slices each rank's range.
    shards = [m for mod in modules.values() for _, m in sharded_modules(mod)]
    groups = task.param_groups(cfg.weight_decay)
    optimizer = build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum)
    group_options = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    lr_scales = [float(g.get("lr_scale", 1.0)) for g in optimizer.param_groups]
    schedule = LRSchedule(cfg.lr, total, min(cfg.warmup_steps, total), cfg.schedule, cfg.min_lr)
    scaler = grad_scaler(device, cfg.precision)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    step, epoch, batch_in_epoch = 0, 0, 0
    resumed_from = None
    best: dict[str, Any] | None = None
    last_path = ckpt_dir / LAST
    if resume:
        if not last_path.is_file():
            raise LrfrError(f"--resume: no checkpoint at {last_path}; start the run without --resume")
        # Onto the CPU: the RNG states in it must stay CPU ByteTensors (set_rng_state refuses CUDA
        # ones); load_state_dict copies weights, and the optimiser casts its state, to each
        # parameter's device.
        ck = load_checkpoint(last_path, map_location="cpu")
        missing = [k for k in (*modules, "optimizer", "step") if k not in ck]
        if missing:
            raise LrfrError(f"{last_path}: not an lrfr training checkpoint (missing {', '.join(missing)})")
        for name, mod in modules.items():
            mod.load_state_dict(ck[name])
        n_saved = len(ck["optimizer"].get("param_groups", []))
        if n_saved != len(optimizer.param_groups):
            raise LrfrError(
                f"{last_path}: its optimiser has {n_saved} parameter group(s), this task {len(optimizer.param_groups)} "
                "(a frozen/unfrozen part changed); start the run over with --force"
            )
        optimizer.load_state_dict(shard_optimizer_state(ck["optimizer"], optimizer, shards) if shards else ck["optimizer"])
        # The state (momenta) continues; the hyper-parameters are this command's (--resume --force
        # with a new --weight-decay or --momentum takes effect), identical on a plain resume.
        for g, opts in zip(optimizer.param_groups, group_options):
            g.update(opts)
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
        mark_ddp_ignored(task)  # each rank's shard is its own: DDP must not broadcast or average it
        net = nn.parallel.DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]

    def checkpoint(path: Path, ep: int, bie: int) -> None:
        if not main and not shards:
            return
        state: dict[str, Any] = {name: _unwrap_state(mod) for name, mod in modules.items()}
        opt_state = gather_optimizer_state(optimizer, shards) if shards else optimizer.state_dict()
        if not main:
            return
        state.update(
            optimizer=opt_state,
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

    val_step = -1  # the step last validated (never twice at one step)

    def run_validation(ep: int, bie: int | None = None) -> dict[str, float] | None:
        nonlocal best, val_step
        if validation is None or val_step == step:
            return None
        val_step = step
        res = None
        improved = False
        if main:
            res = validation.run(task)
            if validation.metric not in res:
                raise LrfrError(f"validation returned no {validation.metric!r} (got {', '.join(res) or 'nothing'})")
            say(f"validation after epoch {ep}: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()))
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps({"step": step, "epoch": ep, **res}) + "\n")
            if validation.better(res[validation.metric], best):
                best = {"metric": validation.metric, validation.metric: res[validation.metric], "step": step, "epoch": ep}
                improved = True
                if not shards:
                    checkpoint(ckpt_dir / BEST, ep, per_epoch if bie is None else bie)
        if shards and broadcast_object(improved):
            checkpoint(ckpt_dir / BEST, ep, per_epoch if bie is None else bie)  # a collective: every rank joins
        barrier()
        return res

    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    task.train()
    t_start = time.time()
    win_t, win_imgs, imgs_total = time.time(), 0, 0
    loss_val: float | None = None
    first_loss: float | None = None
    last_terms: dict[str, float] | None = None
    last_val = None
    window: list[list[float]] = []
    term_names: list[str] | None = None
    if progress:
        progress(step, total=total)
    while step < total:
        sampler = build_sampler(cfg.sampler, labels, cfg.global_batch, cfg.seed, epoch, info.rank, info.world_size, cfg.flip, start=batch_in_epoch, **cfg.sampler_opts())
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if cfg.workers > 0 else None,
            worker_init_fn=quiet_worker_init if cfg.workers > 0 else None,
        )
        for item in loader:
            lr = schedule(step)
            for g, scale in zip(optimizer.param_groups, lr_scales):
                g["lr"] = lr * scale
            batch = _to_batch(item, device)
            ctx = StepContext(step, epoch, cfg.seed, device, info.rank, info.world_size, cfg.precision, cfg.channels_last)
            with autocast(device, cfg.precision):
                out = net(batch, ctx)
            if not isinstance(out, StepOutput):
                raise TypeError(f"{type(task).__name__}.forward must return a StepOutput, got {type(out).__name__}")
            loss = out.loss
            if term_names is None:
                term_names = list(out.terms)
                clash = _RESERVED.intersection(term_names)
                if clash:
                    raise ValueError(f"{type(task).__name__}: loss term name(s) {sorted(clash)} are reserved in metrics.jsonl")
            # One reduction and one host sync per step for the loss and all its terms.
            # The Ctrl-C flag rides along, so every rank stops at the same step (see .signals).
            scalars = torch.stack([loss.detach().float().reshape(()), *(out.terms[k].detach().float().reshape(()) for k in term_names),
                                   torch.tensor(float(stop.requested), device=loss.device)])
            values = all_reduce_mean(scalars).tolist()
            if values.pop() > 0:
                raise KeyboardInterrupt  # before this step's update: the last checkpoint is the state to resume
            loss_val = values[0]
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
                if shards:  # the norm of the whole model, shards summed over ranks
                    clip_grad_norm_(params, cfg.clip_grad, shards)
                else:
                    torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            batch_in_epoch += 1
            task.on_step(step)
            n_img = cfg.global_batch
            win_imgs += n_img
            imgs_total += n_img
            window.append(values)
            if step % cfg.log_every == 0 or step == total:
                now = time.time()
                ips = win_imgs / max(now - win_t, 1e-9)
                if main:
                    means = np.mean(np.asarray(window, dtype=np.float64), axis=0).tolist()
                    rec = {"step": step, "epoch": epoch, "loss": means[0], **dict(zip(term_names, means[1:])),
                           "lr": lr, "images_per_s": round(ips, 2), "time": round(now - t_start, 3)}
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                win_t, win_imgs, window = now, 0, []
            last_terms = dict(zip(term_names, values[1:]))
            if progress:
                progress(1, loss=loss_val, lr=lr, epoch=epoch)
            if step % cfg.checkpoint_every == 0 and step < total:
                checkpoint(last_path, epoch, batch_in_epoch)
            if validation is not None and validation.every and step % validation.every == 0 and step < total:
                last_val = run_validation(epoch, batch_in_epoch)
            if step >= total:
                break
        if batch_in_epoch >= per_epoch:
            epoch += 1
            batch_in_epoch = 0
            if validation is not None and not validation.every:
                last_val = run_validation(epoch - 1)
            if step < total:
                checkpoint(last_path, epoch, 0)
    if batch_in_epoch > 0 or (validation is not None and validation.every):  # mid-epoch stop, or a step schedule: validate the end
        last_val = run_validation(epoch, batch_in_epoch) or last_val
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
        steps_per_epoch=per_epoch,
        terms=last_terms,
    )


__all__ = ["BEST", "LAST", "ClassifierTask", "FitResult", "LoopConfig", "NonFiniteLoss", "Validation", "fit", "plan_steps"]
