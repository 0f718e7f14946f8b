"""``lrfr train``: a face-embedding model from an aligned training set into ``runs/RUN/``.

Options → :class:`~lrfr_cli.engine.runner.TrainingRun` → :func:`~lrfr_cli.engine.runner.run_training`
→ one summary line. Everything else (artifact, resume, DDP, cache, validation) is the runner's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..data.batch_fields import CrossResolutionBatches
from ..data.crb import (
    CRB_MODE_HELP,
    DEFAULT_LR_SIZES,
    check_crb_options,
    crb_reason,
    resolve_crb,
)
from ..data.datasets import TrainingSet, resolve_training_data
from ..data.degrade import parse_sizes
from ..data.quality import QUALITY_HELP, check_quality_mode
from ..data.samplers import SAMPLERS
from ..engine import resolve_device, resolve_precision
from ..engine.loop import LoopConfig
from ..engine.optim import OPTIMIZERS, SCHEDULES
from ..engine.runner import TrainingRun, pair_validation, run_training
from ..engine.tasks import ClassifierTask, Task
from ..errors import LrfrError
from ..losses import (
    build_head,
    describe_losses,
    head_factory,
    head_options,
    heads,
    parse_loss_opts,
)
from ..losses.sharded import build_sharded, check_shardable
from ..models import BACKBONES, INPUT_SIZE, build_backbone
from ..protocols.lfw import validation_pairs
from ..workspace import fingerprint_file
from ._common import handle_errors, state, workspace

DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}


def losses_epilog() -> str:
    """``--help``'s list of losses, one line each (options with defaults: what it is for)."""
    return "Losses (--loss NAME, options set with --loss-opt KEY=VALUE):\n\n" + "\n\n".join(f"  {line}" for line in describe_losses())


@handle_errors
def train(
    data: str = typer.Option(..., "--data", "-d", help="Training set: lists/NAME, a list file (see --data-root), an identity folder ROOT/<identity>/<image>, aligned/NAME or an insightface RecordIO folder (train.rec + train.idx)."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Folder the list's paths are relative to (default: the root recorded in the list's labels.json)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Accept list entries that resolve outside the list's data root."),
    backbone: str = typer.Option("ir50", "--backbone", "-b", help=f"Backbone: {', '.join(BACKBONES)} (mobilefacenet trains on a CPU; tiny is a small net for tests and quick demos)."),
    loss: str = typer.Option("arcface", "--loss", "-l", help=f"Loss head: {', '.join(heads())} (each is described below the options)."),
    loss_opt: list[str] | None = typer.Option(None, "--loss-opt", help="A loss option as KEY=VALUE (repeatable), e.g. --loss-opt m=0.4; the options of each loss and their defaults are listed below."),
    run_name: str | None = typer.Option(None, "--run", "--run-name", help="Run name: writes runs/RUN/ (default: LOSS-BACKBONE). Under torchrun spell it --run-name (torchrun takes --run for its --run-path)."),
    epochs: int | None = typer.Option(None, "--epochs", "-e", min=1, help="Passes over the data (with --max-steps, whichever ends first). Default 20 when neither is given."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimiser steps."),
    batch_size: int = typer.Option(128, "--batch-size", min=1, help="GLOBAL batch size; under torchrun each of N processes takes batch/N."),
    sampler: str = typer.Option("epoch", "--sampler", help="Batch sampler: " + "; ".join(f"{k}: {v.summary}" for k, v in SAMPLERS.items()) + "."),
    images_per_identity: int = typer.Option(4, "--images-per-identity", min=1, help="K of --sampler pk: images of each identity in a batch (batch/K identities per batch)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 0.1 for sgd, 1e-3 for adamw)."),
    head_lr_scale: float = typer.Option(1.0, "--head-lr-scale", min=0.0, help="The head's learning rate is --lr times this (e.g. 10 for a fresh head on a pretrained backbone)."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="Train the head only: the backbone's weights and BatchNorm statistics stay as initialised."),
    optimizer: str = typer.Option("sgd", "--optimizer", help=f"Optimiser: {', '.join(OPTIMIZERS)} (weight decay is not applied to BN/PReLU/bias)."),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum (AdamW beta1)."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", min=0.0, help="Weight decay."),
    schedule: str = typer.Option("cosine", "--schedule", help=f"LR decay after warm-up: {', '.join(SCHEDULES)} (step: x0.1 at 60% and 85%; poly: power 2)."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", min=0, help="Linear LR warm-up steps."),
    margin: float | None = typer.Option(None, "--margin", help="Margin m of the loss (same as --loss-opt m=VALUE; defaults below)."),
    scale: float | None = typer.Option(None, "--scale", help="Logit scale s of margin losses (same as --loss-opt s=VALUE; default 64)."),
    crb: bool | None = typer.Option(None, "--crb/--no-crb", help="Mix each batch with low-resolution versions of its faces, made on the device (default: on for the losses that need it, approach1/2)."),
    lr_sizes: str = typer.Option(",".join(map(str, DEFAULT_LR_SIZES)), "--lr-sizes", help="CRB: heights in pixels the LR versions are down-sampled to (one drawn per sample), e.g. 8,12,16,20."),
    crb_mode: str = typer.Option("copies", "--crb-mode", help=f"CRB mode: {CRB_MODE_HELP}"),
    lr_prob: float = typer.Option(0.5, "--lr-prob", help="CRB split mode: the share of each batch replaced by LR versions (0..1)."),
    classifier: str = typer.Option("full", "--classifier", help="Class weights: full (on every process) or sharded (under torchrun each process holds 1/N of the classes: for 100k+ identities, margin losses only). Checkpoints hold the full matrix either way."),
    sample_rate: float = typer.Option(1.0, "--sample-rate", help="--classifier sharded: share of the classes in each step's softmax (Partial FC's negative sampling; the batch's own classes are always in). 1 = exact softmax."),
    quality: str | None = typer.Option(None, "--quality", help=f"approach2's image quality (same as --loss-opt quality=VALUE): {QUALITY_HELP}"),
    embedding_size: int = typer.Option(512, "--embedding-size", min=2, help="Embedding dimension."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (under torchrun auto picks cuda:LOCAL_RANK)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC memory format (faster convolutions on recent GPUs)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model (slow first steps, faster after)."),
    clip_grad: float | None = typer.Option(None, "--clip-grad", min=0.0, help="Clip the gradient norm to this value."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", min=1, help="Save checkpoints/last.pt every N steps (and at each epoch end and the end)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order and on-device randomness (same seed, same run on CPU)."),
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Data-loading worker processes (0 = load in the main process)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips."),
    cache: bool = typer.Option(False, "--cache", help="Pack the training set once into a uint8 memmap in <workspace>/cache/ so training is not JPEG-bound."),
    val_pairs: Path | None = typer.Option(None, "--val-pairs", help="Verification pairs checked after every epoch to keep best.pt (by val_acc): LFW format (e.g. lfw/pairsDevTest.txt) or 'path1 path2 0|1' lines."),
    val_root: Path | None = typer.Option(None, "--val-root", help="Image root of --val-pairs (default: lfw-deepfunneled/ beside the pairs file). Non-112-px images are centre-cropped."),
    val_bin: str | None = typer.Option(None, "--val-bin", help="insightface .bin packs to validate on, comma-separated (lfw.bin,cfp_fp.bin,agedb_30.bin), or 'auto': the *.bin files of a RecordIO --data folder. Scored as peers do: 10-fold accuracy, flip fusion."),
    val_bin_channels: str = typer.Option("rgb", "--val-bin-channels", help="Channel order of the packs' images: rgb (normal JPEG/PNG: insightface's packs, lrfr make-bin) or bgr (red and blue swapped in the files)."),
    val_sizes: str | None = typer.Option(None, "--val-sizes", help="Also validate with the second face of each pair down-sampled to these heights and back (hr-lr, bicubic), e.g. 16 or 8,16: metrics val_acc/SET@SIZE."),
    val_every: int = typer.Option(0, "--val-every", min=0, help="Validate every N steps (and at the end) instead of after every epoch (0)."),
    val_metric: str = typer.Option("val_acc", "--val-metric", help="The metric that picks best.pt: val_acc (mean over every set and size) or val_acc/SET, val_acc/SET@SIZE (SET: a .bin's file stem or the --val-pairs file's)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads of this process (0 = torch's default, all cores). On cores shared with other jobs, 1 can be many times faster: busy cores stall multi-threaded kernels."),
    log_every: int = typer.Option(10, "--log-every", min=1, help="Write a metrics.jsonl line (mean loss and loss terms) every N steps."),
    # --- super-resolution (--task sr; lrfr_cli/sr/recipe.py) ---
    task: str = typer.Option("classify", "--task", help="classify: a face-embedding backbone with a margin loss; sr: a face super-resolution network (LR faces made at --lr-sizes, scored by PSNR/SSIM on the list's val.txt; try --optimizer adamw --lr 1e-3)."),
    arch: str = typer.Option("srcnn", "--arch", help="--task sr: network, srcnn (3 layers, fast on a CPU) or srresnet (SRGAN's generator; allows --adversarial/--perceptual)."),
    sr_loss: str = typer.Option("l1", "--sr-loss", help="--task sr: content loss between SR and HR faces, l1 or mse."),
    perceptual: str | None = typer.Option(None, "--perceptual", help="--task sr --arch srresnet: runs/RUN of a recognition model whose frozen embedding keeps SR faces' identity (loss 1 - cos)."),
    perceptual_weight: float = typer.Option(0.1, "--perceptual-weight", min=0.0, help="--task sr: weight of the --perceptual loss."),
    adversarial: float = typer.Option(0.0, "--adversarial", min=0.0, help="--task sr --arch srresnet: weight of the SRGAN adversarial loss (0 = off; the paper uses 1e-3)."),
    disc_lr_scale: float = typer.Option(1.0, "--disc-lr-scale", min=0.0, help="--task sr: the discriminator's learning rate is --lr times this."),
    sr_val_images: int = typer.Option(256, "--sr-val-images", min=1, help="--task sr: held-out faces of the list's val.txt scored after each epoch (spread over the file)."),
    sr_patch: int = typer.Option(48, "--sr-patch", min=0, help="--task sr: train on random windows of this many pixels cut from the LR input and HR target (0 = whole faces; --perceptual needs 0)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from checkpoints/last.pt (an error if there is none). The same command re-run also resumes; add --force to resume with changed options (e.g. a lower --lr)."),
    force: bool = typer.Option(False, "--force", help="Start over, replacing a run of that name made with other options (with --resume: continue its checkpoint with the new options)."),
) -> None:
    """Train a face-embedding backbone with a margin loss; resumable, DDP under torchrun."""
    st = state()
    ws = workspace()
    if task.lower() not in ("classify", "sr"):
        raise LrfrError(f"unknown --task {task!r}; choose one of: classify, sr")
    choices = {"backbone": (backbone, BACKBONES), "loss": (loss, heads()), "optimizer": (optimizer, OPTIMIZERS),
               "schedule": (schedule, SCHEDULES), "sampler": (sampler, tuple(SAMPLERS))}
    for what, (value, allowed) in choices.items():
        if value.lower() not in allowed:
            raise LrfrError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
    backbone, loss, optimizer, schedule, sampler = backbone.lower(), loss.lower(), optimizer.lower(), schedule.lower(), sampler.lower()
    classifier = classifier.lower()
    if classifier not in ("full", "sharded"):
        raise LrfrError(f"unknown --classifier {classifier!r}; choose one of: full, sharded")
    if classifier == "full" and sample_rate != 1.0:
        raise LrfrError("--sample-rate needs --classifier sharded (the full classifier uses every class in every step)")
    head_kw: dict[str, Any] = parse_loss_opts(loss, loss_opt or [])
    if quality is not None:
        try:
            quality = check_quality_mode(quality)
        except LrfrError as e:
            raise LrfrError(f"--quality: {e}") from None
    for key, flag, value in (("s", "--scale", scale), ("m", "--margin", margin), ("quality", "--quality", quality)):
        if value is not None:
            if key not in head_options(loss):
                raise LrfrError(f"{flag}: loss {loss} has no option {key!r} (its options: {', '.join(head_options(loss)) or 'none'})")
            head_kw.update(parse_loss_opts(loss, [f"{key}={value}"]))
    if "quality" in head_kw:  # one spelling in config.json, whichever way it was given
        head_kw["quality"] = check_quality_mode(head_kw["quality"])
    crb_policy = getattr(head_factory(loss), "crb", "off")
    use_crb = resolve_crb(crb, crb_policy, loss)
    crb_cfg = None
    if use_crb:
        try:
            parsed = parse_sizes(lr_sizes)
        except LrfrError as e:
            raise LrfrError(str(e).replace("--sizes", "--lr-sizes")) from None
        sizes = check_crb_options(parsed, crb_mode, lr_prob, height=INPUT_SIZE)
        crb_cfg = {"sizes": list(sizes), "mode": crb_mode, "lr_prob": lr_prob}
    if epochs is None and max_steps is None:
        epochs = 20
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    name = run_name or f"{loss}-{backbone}"

    ts = resolve_training_data(data, data_root, ws.root, allow_outside_root=allow_outside_root)
    pairs = validation_pairs(val_pairs, val_root) if val_pairs else None
    validation_cfg, val_files, packs = _validation_options(ts, val_pairs, val_bin, val_bin_channels, val_sizes, val_every, val_metric)
    # fail on bad options before claiming the run (sharded: a 2-class probe, the full matrix may not fit)
    probe = build_head(loss, embedding_size, 2 if classifier == "sharded" else ts.num_classes, **head_kw)
    if classifier == "sharded":
        check_shardable(probe, sample_rate)
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
        sampler=sampler,
        images_per_identity=images_per_identity,
        log_every=log_every,
        workers=workers,
    )
    if task.lower() == "sr":  # super-resolution: options and run built in lrfr_cli/sr/recipe.py
        from ..sr.recipe import SROptions, sr_summary, sr_training_run

        sr_opts = SROptions(arch, tuple(parse_sizes(lr_sizes)), sr_loss.lower(), perceptual, perceptual_weight, adversarial, disc_lr_scale, sr_val_images, sr_patch)
        sr_spec = sr_training_run(ts=ts, cfg=cfg, name=run_name or f"sr-{arch.lower()}", opts=sr_opts, ws_root=ws.root, device=dev,
                                  cache=cache, resume=resume, force=force, threads=threads)
        sr_out = run_training(ws, sr_spec, dev, progress=st.progress if st.show_progress else None)
        if sr_out.is_main:
            st.summary(*sr_summary(sr_out))
        return
    task_opts = {"freeze_backbone": freeze_backbone, "head_lr_scale": head_lr_scale}
    config: dict[str, Any] = {
        "backbone": backbone,
        "embedding_size": embedding_size,
        "input_size": INPUT_SIZE,
        "preprocess": "RGB, (x/255 - 0.5) / 0.5",
        "loss": loss,
        "head": head_kw,
        "num_classes": ts.num_classes,
        "data": ts.source,
        "data_kind": ts.kind,
        "images": len(ts),
        "loop": cfg.identity(),
        "val_pairs": str(val_pairs) if val_pairs else None,
    }
    if validation_cfg:  # only when used: earlier runs keep their identity
        config["validation"] = validation_cfg
    # config.json says whether batches were mixed and why (a loss's default, or a flag); the
    # identity below keeps only what changes the batches, so earlier runs keep theirs.
    config["crb"] = {"enabled": use_crb, "why": crb_reason(crb, crb_policy, loss), **(crb_cfg or {})}
    if task_opts != {"freeze_backbone": False, "head_lr_scale": 1.0}:
        config["task"] = task_opts  # only when changed: earlier runs keep their identity
    if classifier == "sharded":  # only when sharded: earlier runs keep their identity
        config["classifier"] = {"kind": "sharded", "sample_rate": sample_rate}
    options = {k: v for k, v in config.items() if k not in ("data", "images", "crb")}
    if crb_cfg:
        options["crb"] = crb_cfg  # only when on: runs without CRB keep their earlier identity
    inputs: dict[str, Any] = {"data": ts.fingerprint}
    if val_pairs:
        inputs["val_pairs"] = fingerprint_file(val_pairs)
    if val_files:
        inputs["val_bin"] = [fingerprint_file(f) for f in val_files]

    def build_task(ts: TrainingSet) -> Task:
        model = build_backbone(backbone, embedding_size)
        if classifier == "sharded":
            head = build_sharded(loss, embedding_size, ts.num_classes, sample_rate=sample_rate, seed=seed, **head_kw)
        else:
            head = build_head(loss, embedding_size, ts.num_classes, **head_kw)
        transforms = [CrossResolutionBatches(**crb_cfg)] if crb_cfg else []
        return ClassifierTask(model, head, transforms=transforms, **task_opts)

    spec = TrainingRun(
        command="train", name=name, data=ts, cfg=cfg, config=config, options=options, inputs=inputs,
        build_task=build_task,
        validation=pair_validation(pairs, dev, prec, bins=packs, channels=val_bin_channels.lower(), every=val_every,
                                   metric=val_metric, sizes=validation_cfg.get("sizes", ()),
                                   pairs_name=Path(val_pairs).stem if val_pairs else "pairs") if (pairs or packs) else None,
        cache=cache, resume=resume, force=force, threads=threads,
    )
    out = run_training(ws, spec, dev, progress=st.progress if st.show_progress else None)
    if not out.is_main:
        return
    c = out.counts
    if out.up_to_date:
        st.summary(
            f"[green]up to date[/green] runs/{name}: {c.get('steps')} steps, final loss {c.get('final_loss')} (--force to retrain)",
            {"command": "train", "run": name, "path": str(out.path), "up_to_date": True, **c},
        )
        return
    res = out.result
    assert res is not None
    val = f", best {val_metric} {c[f'best_{val_metric}']:.4f}" if c.get(f"best_{val_metric}") is not None else ""
    fl = f"{res.first_loss:.3f}" if res.first_loss is not None else "-"
    ll = f"{res.loss:.3f}" if res.loss is not None else "-"
    resumed = f" (resumed from step {res.resumed_from})" if res.resumed_from is not None else ""
    st.summary(
        f"[green]trained[/green] runs/{name}: {res.step} steps{resumed}, loss {fl} → {ll}, "
        f"{res.images_per_s:,.0f} img/s{val} → {out.path}",
        {"command": "train", "run": name, "path": str(out.path), "up_to_date": False, **c},
    )


def val_bin_files(spec: str, ts: TrainingSet) -> list[Path]:
    """``--val-bin``: comma-separated files, or ``auto``: the ``*.bin`` packs beside a RecordIO
    folder's ``train.rec`` (insightface's packs ship their verification sets that way)."""
    if spec.strip().lower() == "auto":
        if ts.kind != "recordio":
            raise LrfrError(f"--val-bin auto finds the .bin files of an insightface RecordIO folder; --data is a {ts.kind} (name the .bin files)")
        found = sorted(Path(ts.root).glob("*.bin"))
        if not found:
            raise LrfrError(f"--val-bin auto: no *.bin files in {ts.root} (name the files, or build one with lrfr make-bin)")
        return found
    files = [Path(p.strip()).expanduser() for p in spec.split(",") if p.strip()]
    if not files:
        raise LrfrError("--val-bin: give .bin files (comma-separated) or auto")
    return files


def _validation_options(ts: TrainingSet, val_pairs: Path | None, val_bin: str | None, channels: str, val_sizes: str | None,
                        every: int, metric: str) -> tuple[dict[str, Any], list[Path], list[Any]]:
    """Checks the validation options before any training (bad packs fail here, on every rank):
    ``(config.json's validation block (empty: the defaults), the .bin files, their packs)``."""
    from ..data.binfile import check_channels, read_bin
    from ..engine.validate import metric_names

    files = val_bin_files(val_bin, ts) if val_bin else []
    check_channels(channels, "--val-bin-channels")
    packs = [read_bin(f) for f in files]
    try:
        sizes = parse_sizes(val_sizes) if val_sizes else []
    except LrfrError as e:
        raise LrfrError(str(e).replace("--sizes", "--val-sizes")) from None
    if any(s >= INPUT_SIZE for s in sizes):
        raise LrfrError(f"--val-sizes: probe sizes must be below the {INPUT_SIZE} px input (HR is always validated)")
    names = ([Path(val_pairs).stem] if val_pairs else []) + [p.name for p in packs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LrfrError(f"--val-bin: two validation sets named {dup[0]!r} (metrics are named after the file stem); rename one")
    if not names and (val_sizes or every or metric != "val_acc"):
        raise LrfrError("--val-sizes, --val-every and --val-metric need --val-pairs or --val-bin")
    known = metric_names(names, sizes) if (packs or sizes) else ["val_acc"]
    if metric not in known:
        raise LrfrError(f"--val-metric {metric!r}: choose one of {', '.join(known)}")
    cfg: dict[str, Any] = {}
    if files:
        cfg.update(bins=[str(f) for f in files], channels=channels.lower())
    if sizes:
        cfg["sizes"] = sizes
    if every:
        cfg["every"] = every
    if metric != "val_acc":
        cfg["metric"] = metric
    return cfg, files, packs


def register(app: typer.Typer) -> None:
    app.command("train", epilog=losses_epilog())(train)
