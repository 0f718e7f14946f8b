"""``lrfr train``: a face-embedding model from an aligned training set into ``runs/RUN/``."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import typer

from ..data.cache import CachedDataset, build_cache, is_built
from ..data.datasets import FaceDataset, TrainingSet, open_dataset, read_pairs, resolve_training_data
from ..engine import init_distributed, resolve_device, resolve_precision, seed_everything
from ..engine.distributed import barrier, cleanup
from ..engine.loop import LAST, ClassifierTask, LoopConfig, fit
from ..engine.optim import OPTIMIZERS, SCHEDULES
from ..engine.validate import PairSet, verify
from ..errors import LrfrError
from ..losses import build_head, heads
from ..models import BACKBONES, INPUT_SIZE, build_backbone
from ..workspace import Workspace, atomic_write_json, fingerprint_file
from ._common import handle_errors, state, workspace

DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}


def _broadcast(obj: Any, src_is_me: bool) -> Any:
    """Rank 0's decision (skip / resume / error text) to every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj if src_is_me else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _logger(path: Path, enabled: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {msg}\n")

    return log


def _dataset(ts: TrainingSet, use_cache: bool, ws: Workspace, workers: int, is_main: bool, st: Any) -> FaceDataset:
    ds = open_dataset(ts)
    if not use_cache:
        return ds
    import hashlib
    import json

    key = hashlib.sha1(json.dumps(ts.fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    art = ws.artifact("cache", key)
    if is_main:
        with art.run("train --cache", {"size": INPUT_SIZE}, {"data": ts.fingerprint}) as run:
            if not run.skipped or not is_built(art.path):
                with st.progress("packing cache", total=len(ds), unit="img") as progress:
                    n = build_cache(ds, art.path, workers=workers, progress=progress)
                run.record(images=n)
    barrier()
    return CachedDataset(art.path)


@handle_errors
def train(
    data: str = typer.Option(..., "--data", "-d", help="Training set: a list artifact (lists/NAME or its train.txt), a list file + --data-root, an identity folder (ROOT/<identity>/<image>), a workspace artifact (aligned/NAME) or an insightface RecordIO folder (train.rec + train.idx)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder the list's paths are relative to (default: the root recorded in the list's labels.json)."),
    backbone: str = typer.Option("ir50", "--backbone", "-b", help=f"Backbone: {', '.join(BACKBONES)} (mobilefacenet trains on a CPU; tiny is a small net for tests and quick demos)."),
    loss: str = typer.Option("arcface", "--loss", "-l", help=f"Loss head: {', '.join(heads())}."),
    run_name: Optional[str] = typer.Option(None, "--run", "--run-name", help="Run name: writes <workspace>/runs/RUN/ (default: LOSS-BACKBONE). Under torchrun spell it --run-name (torchrun's parser mistakes --run for its own --run-path)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Passes over the data (with --max-steps, whichever ends first). Default 20 when neither is given."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimiser steps."),
    batch_size: int = typer.Option(128, "--batch-size", min=1, help="GLOBAL batch size; under torchrun each of N processes takes batch/N."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 0.1 for sgd, 1e-3 for adamw)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help=f"Optimiser: {', '.join(OPTIMIZERS)} (weight decay is not applied to BN/PReLU/bias)."),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum (AdamW beta1)."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", min=0.0, help="Weight decay."),
    schedule: str = typer.Option("cosine", "--schedule", help=f"LR decay after warm-up: {', '.join(SCHEDULES)} (step: x0.1 at 60% and 85%; poly: power 2)."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", min=0, help="Linear LR warm-up steps."),
    margin: Optional[float] = typer.Option(None, "--margin", help="Margin m of the loss (default: arcface 0.5, cosface 0.35, sphereface 4)."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Logit scale s of margin losses (default 64)."),
    embedding_size: int = typer.Option(512, "--embedding-size", min=2, help="Embedding dimension."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (under torchrun auto picks cuda:LOCAL_RANK)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC memory format (faster convolutions on recent GPUs)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model (slow first steps, faster after)."),
    clip_grad: Optional[float] = typer.Option(None, "--clip-grad", min=0.0, help="Clip the gradient norm to this value."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", min=1, help="Save checkpoints/last.pt every N steps (and at each epoch end and the end)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and data order (same seed, same run on CPU)."),
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Data-loading worker processes (0 = load in the main process)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips."),
    cache: bool = typer.Option(False, "--cache", help="Pack the training set once into a uint8 memmap in <workspace>/cache/ so training is not JPEG-bound."),
    val_pairs: Optional[Path] = typer.Option(None, "--val-pairs", help="Verification pairs checked after every epoch to keep best.pt: LFW format (e.g. lfw/pairsDevTest.txt) or 'path1 path2 0|1' lines."),
    val_root: Optional[Path] = typer.Option(None, "--val-root", help="Image root of --val-pairs (default: lfw-deepfunneled/ beside the pairs file). Non-112-px images are centre-cropped."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads of this process (0 = torch's default, all cores). On cores shared with other jobs, 1 can be many times faster: busy cores stall multi-threaded kernels."),
    log_every: int = typer.Option(10, "--log-every", min=1, help="Write a metrics.jsonl line every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from checkpoints/last.pt (an error if there is none). Re-running an interrupted run's identical command also resumes; add --force to resume with changed options (e.g. a lower --lr)."),
    force: bool = typer.Option(False, "--force", help="Start the run over, replacing a run of that name made with other options (with --resume: keep its checkpoint and continue with the new options)."),
) -> None:
    """Train a face-embedding backbone with a margin loss; resumable, DDP under torchrun."""
    st = state()
    ws = workspace()
    if backbone.lower() not in BACKBONES:
        raise LrfrError(f"unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}")
    if loss.lower() not in heads():
        raise LrfrError(f"unknown loss {loss!r}; choose one of: {', '.join(heads())}")
    if optimizer.lower() not in OPTIMIZERS:
        raise LrfrError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if schedule.lower() not in SCHEDULES:
        raise LrfrError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    backbone, loss, optimizer, schedule = backbone.lower(), loss.lower(), optimizer.lower(), schedule.lower()
    if epochs is None and max_steps is None:
        epochs = 20
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    name = run_name or f"{loss}-{backbone}"
    art = ws.artifact("runs", name)

    ts = resolve_training_data(data, data_root, ws.root)
    pairs = read_pairs(val_pairs, val_root) if val_pairs else None
    cfg = LoopConfig(
        global_batch=batch_size,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr if lr is not None else DEFAULT_LR[optimizer],
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup_steps=warmup_steps,
        precision=prec,
        channels_last=channels_last,
        compile=compile_,
        clip_grad=clip_grad,
        checkpoint_every=checkpoint_every,
        seed=seed,
        flip=flip,
        log_every=log_every,
        workers=workers,
    )
    head_kw = {"s": scale, "m": margin}
    config: dict[str, Any] = {
        "backbone": backbone,
        "embedding_size": embedding_size,
        "input_size": INPUT_SIZE,
        "preprocess": "RGB, (x/255 - 0.5) / 0.5",
        "loss": loss,
        "head": {k: v for k, v in head_kw.items() if v is not None},
        "num_classes": ts.num_classes,
        "data": ts.source,
        "data_kind": ts.kind,
        "images": len(ts),
        "loop": cfg.identity(),
        "val_pairs": str(val_pairs) if val_pairs else None,
    }
    options = {k: v for k, v in config.items() if k not in ("data", "images")}
    inputs: dict[str, Any] = {"data": ts.fingerprint}
    if val_pairs:
        inputs["val_pairs"] = fingerprint_file(val_pairs)

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    info = init_distributed(dev)
    try:
        _run(st, ws, art, name, ts, pairs, cfg, config, options, inputs, head_kw, info, dev, resume, force, cache)
    finally:
        cleanup()
        torch.set_num_threads(old_threads)  # in-process callers (tests) get their setting back


def _run(st, ws, art, name, ts, pairs, cfg, config, options, inputs, head_kw, info, dev, resume, force, cache) -> None:  # type: ignore[no-untyped-def]
    import contextlib

    main = info.is_main
    if main:
        ws.ensure_writable()
    # --resume --force: continue from last.pt with changed options (e.g. a lower --lr after a NaN
    # stop), keeping the run folder; --force alone starts over.
    keep = resume and force
    ctx = art.run("train", options, inputs, force=force, clear_on_force=not keep) if main else contextlib.nullcontext()
    with ctx as run:
        decision: dict[str, Any] = {}
        if main:
            last = art.path / "checkpoints" / LAST
            if run.skipped:
                decision = {"skip": True}
            elif resume and not last.is_file():
                decision = {"error": f"--resume: runs/{name} has no checkpoint ({last}); start it without --resume"}
            else:
                decision = {"resume": last.is_file() and (resume or run.resumed)}
        decision = _broadcast(decision, main)
        if "error" in decision:
            raise LrfrError(decision["error"])
        if decision.get("skip"):
            if not main:
                return
            c = run.counts
            st.summary(
                f"[green]up to date[/green] runs/{name}: {c.get('steps')} steps, final loss {c.get('final_loss')} (--force to retrain)",
                {"command": "train", "run": name, "path": str(art.path), "up_to_date": True, **c},
            )
            return
        do_resume = bool(decision["resume"])
        log = _logger(art.path / "log.txt", main)
        if main:
            atomic_write_json(art.path / "config.json", config)
            log(f"{'resume' if do_resume else 'start'} train {name}: {ts.kind} {ts.source} ({len(ts)} images, {ts.num_classes} classes), "
                f"backbone={config['backbone']} loss={config['loss']} world_size={info.world_size} device={dev}")
        seed_everything(cfg.seed)
        model = build_backbone(config["backbone"], config["embedding_size"])
        head = build_head(config["loss"], config["embedding_size"], ts.num_classes, **head_kw)
        task = ClassifierTask(model, head)
        dataset = _dataset(ts, cache, ws, cfg.workers, main, st)
        validate = None
        if pairs is not None and main:
            pair_set = PairSet.load(pairs)
            validate = lambda m: verify(m, pair_set, dev, cfg.precision)  # noqa: E731
        elif pairs is not None:
            validate = lambda m: {}  # noqa: E731  (only rank 0 validates; others wait at the barrier)
        t0 = time.time()
        show = st.show_progress and main
        with (st.progress(f"train {name}", unit="step") if show else contextlib.nullcontext(None)) as progress:
            try:
                res = fit(task, dataset, cfg, art.path, device=dev, info=info, config=config, resume=do_resume,
                          progress=progress, validate=validate, log=log)
            except LrfrError as e:
                log(f"stopped: {e}")
                raise
        counts = {
            "steps": res.step,
            "epochs": round(res.step / max(1, len(ts) // cfg.global_batch), 3),
            "first_loss": res.first_loss,
            "final_loss": res.loss,
            "images_per_s": round(res.images_per_s, 2),
            "num_classes": ts.num_classes,
            "images": len(ts),
            "best_val_acc": res.best["val_acc"] if res.best else None,
            "last_val_acc": res.last_val.get("val_acc") if res.last_val else None,
            "resumed_from": res.resumed_from,
            "world_size": info.world_size,
        }
        if main:
            run.record(**counts)
            log(f"finished at step {res.step} in {time.time() - t0:.1f}s, loss {res.first_loss} -> {res.loss}")
    if not main:
        return
    val = f", best val acc {counts['best_val_acc']:.4f}" if counts["best_val_acc"] is not None else ""
    fl = f"{res.first_loss:.3f}" if res.first_loss is not None else "-"
    ll = f"{res.loss:.3f}" if res.loss is not None else "-"
    resumed = f" (resumed from step {res.resumed_from})" if res.resumed_from is not None else ""
    st.summary(
        f"[green]trained[/green] runs/{name}: {res.step} steps{resumed}, loss {fl} → {ll}, "
        f"{res.images_per_s:,.0f} img/s{val} → {art.path}",
        {"command": "train", "run": name, "path": str(art.path), "up_to_date": False, **counts},
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
