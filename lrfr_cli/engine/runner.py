"""The training runner: everything around :func:`~.loop.fit` that every training command shares.

``train`` and ``finetune`` (and super-resolution training) differ in their options and in the
task they build; the rest is here once: joining the torchrun process group, claiming the
``runs/NAME`` artifact (skip when complete with the same options, resume when interrupted), rank
0's decision broadcast to every rank, ``config.json`` and ``log.txt``, the packed-cache keying,
seeding before the task is built, validation wiring, and the counts recorded in the manifest. A
command is options → :class:`TrainingRun` → :func:`run_training` → its one-line summary.

Layers never print: progress goes through the ``progress`` factory the command passes in (the
rich bars of :class:`lrfr_cli.ui.State`), errors are :class:`~lrfr_cli.errors.LrfrError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.datasets import FaceDataset, TrainingSet, open_dataset
from ..errors import LrfrError
from ..workspace import Workspace, atomic_write_json
from .checkpointer import LAST
from .distributed import barrier, broadcast_object, cleanup, init_distributed
from .loop import FitResult, LoopConfig, fit
from .seed import seed_everything
from .tasks import Task
from .validation import Validation

if TYPE_CHECKING:
    from ..data.binfile import BinPack

#: ``progress(description, total, unit)`` → a context manager yielding the progress callback.
ProgressFactory = Callable[[str, "int | None", str], AbstractContextManager[Callable[..., None]]]


@dataclass
class TrainingRun:
    """One training command's request: what to train on, how, and under which identity.

    ``options`` (with ``inputs``, the data fingerprints) is the artifact's identity: the same
    values on a complete run mean "up to date". ``config`` goes to ``config.json`` and into every
    checkpoint. ``build_task`` is called after seeding (so initial weights depend on ``cfg.seed``
    only) with the training set; ``validation`` is optional.
    """

    command: str
    name: str
    data: TrainingSet
    cfg: LoopConfig
    config: dict[str, Any]
    options: dict[str, Any]
    inputs: dict[str, Any]
    build_task: Callable[[TrainingSet], Task]
    validation: Validation | None = None
    cache: bool = False
    resume: bool = False
    force: bool = False
    threads: int = 0


@dataclass
class RunOutcome:
    """What happened, for the command's summary (``counts`` are also in the manifest)."""

    name: str
    path: Path
    is_main: bool
    up_to_date: bool
    counts: dict[str, Any] = field(default_factory=dict)
    result: FitResult | None = None


def run_logger(path: Path, enabled: bool) -> Callable[[str], None]:
    """Append time-stamped lines to the run's ``log.txt`` (rank 0 only)."""

    def log(msg: str) -> None:
        if enabled:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a") as fh:
                    fh.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {msg}\n")
            except OSError:
                pass  # a log line (say "stopped: disk full" on that full disk) must not mask the error it reports

    return log


def training_dataset(ts: TrainingSet, use_cache: bool, ws: Workspace, workers: int, is_main: bool, progress: ProgressFactory | None = None) -> FaceDataset:
    """The dataset the loop reads: decoded files, or the packed uint8 cache keyed by the data's
    fingerprint (built once by rank 0; every rank then maps it)."""
    from ..data.cache import CachedDataset, build_cache, is_built
    from ..models import INPUT_SIZE

    ds = open_dataset(ts)
    if not use_cache:
        return ds
    key = hashlib.sha1(json.dumps(ts.fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    art = ws.artifact("cache", key)
    if is_main:
        with art.run("train --cache", {"size": INPUT_SIZE}, {"data": ts.fingerprint}) as run:
            if not run.skipped or not is_built(art.path):
                bar = progress("packing cache", len(ds), "img") if progress else contextlib.nullcontext(None)
                with bar as cb:
                    n = build_cache(ds, art.path, workers=workers, progress=cb)
                run.record(images=n)
    barrier()
    return CachedDataset(art.path)


def pair_validation(pairs: list[tuple[Path, Path, bool]] | None, device: torch.device, precision: str, *,
                    bins: Sequence[BinPack] = (), sizes: Sequence[int] = (), every: int = 0, metric: str = "val_acc",
                    channels: str = "rgb", pairs_name: str = "pairs") -> Validation:
    """Verification accuracy (``val_acc``, higher is better, or ``metric``: one of
    :func:`~lrfr_cli.engine.validate.metric_names`) of the task's embedding model on ``pairs``
    and on the ``.bin`` packs, at HR and at each of ``sizes``; the faces are decoded on the first
    call, i.e. on rank 0 only."""
    from .validate import PairSet, verify_sets

    cache: list[PairSet] = []

    def run(task: Task) -> dict[str, float]:
        if not cache:
            if pairs:
                cache.append(PairSet.load(pairs, pairs_name))
            cache.extend(PairSet.from_bin(pk, channels) for pk in bins)
        return verify_sets(task.embedding_model(), cache, device, precision, sizes)

    return Validation(run, metric=metric, higher_is_better=True, every=every)


def run_training(ws: Workspace, spec: TrainingRun, device: torch.device, progress: ProgressFactory | None = None) -> RunOutcome:
    """Claim ``runs/NAME``, train (or resume, or skip), record the counts; DDP-aware."""
    old_threads = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    info = init_distributed(device)
    try:
        return _run(ws, spec, device, info, progress)
    finally:
        cleanup()
        torch.set_num_threads(old_threads)  # in-process callers (tests) get their setting back


def _run(ws: Workspace, spec: TrainingRun, device: torch.device, info: Any, progress: ProgressFactory | None) -> RunOutcome:
    main = info.is_main
    art = ws.artifact("runs", spec.name)
    if main:
        ws.ensure_writable()
    # --resume --force: continue from last.pt with changed options (e.g. a lower --lr after a NaN
    # stop), keeping the run folder; --force alone starts over.
    keep = spec.resume and spec.force
    ctx = art.run(spec.command, spec.options, spec.inputs, force=spec.force, clear_on_force=not keep) if main else contextlib.nullcontext()
    with ctx as run:
        decision: dict[str, Any] = {}
        if main:
            last = art.path / "checkpoints" / LAST
            if run.skipped:
                decision = {"skip": True}
            elif spec.resume and not last.is_file():
                decision = {"error": f"--resume: runs/{spec.name} has no checkpoint ({last}); start it without --resume"}
            else:
                decision = {"resume": last.is_file() and (spec.resume or run.resumed)}
        decision = broadcast_object(decision)
        if "error" in decision:
            raise LrfrError(decision["error"])
        if decision.get("skip"):
            return RunOutcome(spec.name, art.path, main, True, dict(run.counts) if main else {})
        do_resume = bool(decision["resume"])
        log = run_logger(art.path / "log.txt", main)
        ts, cfg = spec.data, spec.cfg
        if main:
            atomic_write_json(art.path / "config.json", spec.config)
            what = " ".join(f"{k}={spec.config[k]}" for k in ("backbone", "loss") if k in spec.config)
            log(f"{'resume' if do_resume else 'start'} {spec.command} {spec.name}: {ts.kind} {ts.source} ({len(ts)} images, "
                f"{ts.num_classes} classes), {what} world_size={info.world_size} device={device}")
        seed_everything(cfg.seed)
        task = spec.build_task(ts)
        dataset = training_dataset(ts, spec.cache, ws, cfg.workers, main, progress)
        t0 = time.time()
        bar = progress(f"{spec.command} {spec.name}", None, "step") if (progress and main) else contextlib.nullcontext(None)
        with bar as cb:
            try:
                res = fit(task, dataset, cfg, art.path, device=device, info=info, config=spec.config, resume=do_resume,
                          progress=cb, validation=spec.validation, log=log)
            except LrfrError as e:
                log(f"stopped: {e}")
                raise
        metric = spec.validation.metric if spec.validation else "val_acc"
        counts: dict[str, Any] = {
            "steps": res.step,
            "epochs": round(res.step / max(1, res.steps_per_epoch), 3),
            "first_loss": res.first_loss,
            "final_loss": res.loss,
            "images_per_s": round(res.images_per_s, 2),
            "num_classes": ts.num_classes,
            "images": len(ts),
            f"best_{metric}": res.best[metric] if res.best and metric in res.best else None,
            f"last_{metric}": res.last_val.get(metric) if res.last_val else None,
            "resumed_from": res.resumed_from,
            "world_size": info.world_size,
        }
        if res.terms:
            counts["final_terms"] = res.terms
        if main:
            run.record(**counts)
            log(f"finished at step {res.step} in {time.time() - t0:.1f}s, loss {res.first_loss} -> {res.loss}")
    return RunOutcome(spec.name, art.path, main, False, counts, res)


__all__ = ["ProgressFactory", "RunOutcome", "TrainingRun", "pair_validation", "run_logger", "run_training", "training_dataset"]
