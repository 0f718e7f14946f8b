"""Fine-tune a trained model for low resolution (octuplet, DeriveNet, distillation, Siamese, CRB).

``lrfr finetune --method NAME --from runs/RUN|CHECKPOINT --data ...`` writes ``runs/NAME/`` like
``lrfr train`` does (``eval`` and ``report`` treat it as any run); its ``config.json`` records
the parent model and its checkpoint's sha1, which is also part of the run's identity. Options →
:func:`~lrfr_cli.finetune.build_method` inside a :class:`~lrfr_cli.engine.runner.TrainingRun` →
:func:`~lrfr_cli.engine.runner.run_training` → one summary line; batches are always P × K.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import typer

from ..data.datasets import TrainingSet, resolve_training_data
from ..data.degrade import parse_sizes
from ..data.samplers import batches_per_epoch
from ..embed import LoadedModel, resolve_model
from ..engine import resolve_device, resolve_precision
from ..engine.loop import LoopConfig, plan_steps
from ..engine.optim import OPTIMIZERS, SCHEDULES
from ..engine.runner import TrainingRun, pair_validation, run_training
from ..engine.tasks import Task
from ..errors import LrfrError
from ..finetune import (
    METHODS,
    build_method,
    describe_methods,
    method_class,
    resolve_options,
)
from ..finetune.base import check_pk
from ..losses import heads
from ..models import BACKBONES, INPUT_SIZE
from ..protocols.lfw import validation_pairs
from ..workspace import fingerprint_file
from ._common import handle_errors, state, workspace

DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}


def methods_epilog() -> str:
    return "Methods (--method NAME; other options with --method-opt KEY=VALUE):\n\n" + "\n\n".join(f"  {line}" for line in describe_methods())


def load_parent(spec: str, ws_root: Path, backbone: str | None, checkpoint: str, embedding_size: int | None,
                onnx_input: dict[str, Any] | None = None) -> LoadedModel:
    """The ``--from`` model, refusing what cannot be fine-tuned as asked (one-line errors).

    An ONNX file becomes a trainable torch module (every float weight a parameter) behind lrfr's
    RGB input; ``onnx_input`` (``channel_order``, ``layout``, ``pixel_mean``, ``pixel_std``)
    describes its input where its metadata does not."""
    parent = resolve_model(spec, ws_root, backbone=backbone, checkpoint=checkpoint, **(onnx_input or {}))
    if parent.source == "run":
        run_dir = parent.checkpoint.parent.parent
        manifest = run_dir / "manifest.json"
        status = None
        if manifest.is_file():
            try:
                status = json.loads(manifest.read_text()).get("status")
            except json.JSONDecodeError:
                status = "unreadable"
        if status is not None and status != "complete":
            raise LrfrError(
                f"--from {spec}: run {run_dir.name} is incomplete (status {status}); finish it (re-run its command) "
                "before fine-tuning from it"
            )
    if parent.channel_order != "rgb":
        raise LrfrError(
            f"--from {spec}: a {parent.channel_order.upper()}-input checkpoint; lrfr fine-tunes on RGB faces, "
            "so its weights would start from the wrong channel order"
        )
    if parent.input_size != INPUT_SIZE:
        raise LrfrError(f"--from {spec}: takes {parent.input_size}×{parent.input_size} faces; lrfr fine-tunes on {INPUT_SIZE}×{INPUT_SIZE} aligned faces")
    if embedding_size is not None and embedding_size != parent.embedding_size:
        raise LrfrError(
            f"--embedding-size {embedding_size}: --from {spec} gives {parent.embedding_size}-d embeddings; "
            f"fine-tuning keeps the parent's size (drop --embedding-size or pass {parent.embedding_size})"
        )
    return parent


def _contract_text(c: dict[str, Any]) -> str:
    return (f"{c['channel_order'].upper()}, (pixel - {','.join(f'{v:g}' for v in c['mean'])}) / {','.join(f'{v:g}' for v in c['std'])}, "
            f"{c['layout'].upper()} into the ONNX graph")


def _method_opts(method: str, pairs: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """``--margin`` & co. and ``--method-opt KEY=VALUE`` as the method's typed options."""
    cls = method_class(method)
    given: dict[str, Any] = {}
    for flag, (key, value) in pairs.items():
        if value is None:
            continue
        if key not in cls.options:
            have = ", ".join(cls.options) or "none"
            raise LrfrError(f"{flag}: method {cls.name} has no option {key!r} (its options: {have})")
        given[key] = value
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise LrfrError(f"--method-opt {item!r}: expected KEY=VALUE")
        if key not in cls.options:
            have = ", ".join(f"{k}={o.default}" for k, o in cls.options.items())
            raise LrfrError(f"--method-opt {item}: method {cls.name} has no option {key!r} (its options: {have})")
        default = cls.options[key].default
        try:
            if isinstance(default, str):
                given[key] = text
            elif isinstance(default, int) and not isinstance(default, bool):
                given[key] = int(text)
            else:
                given[key] = float(text)
                if not math.isfinite(given[key]):
                    raise ValueError(text)
        except ValueError:
            raise LrfrError(f"--method-opt {item}: {cls.name}'s {key} takes a number (default {default})") from None
    return given


@handle_errors
def finetune(
    method: str = typer.Option(..., "--method", "-m", help=f"Fine-tuning method: {', '.join(METHODS)} (each is described below the options)."),
    from_: str = typer.Option(..., "--from", help="The model to start from: runs/RUN (a complete run of this workspace), a .pt/.pth checkpoint that `lrfr eval --model` loads (insightface, face.evoLVe; add --backbone if it is ambiguous), or an .onnx file (converted to a trainable torch module; --layout, --channel-order, --pixel-mean, --pixel-std where its metadata does not say)."),
    data: str = typer.Option(..., "--data", "-d", help="Fine-tuning set, as for `lrfr train --data`: lists/NAME, a list file, an identity folder, aligned/NAME or a RecordIO folder."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Folder the list's paths are relative to (default: the root recorded in the list's labels.json)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Accept list entries that resolve outside the list's data root."),
    backbone: str | None = typer.Option(None, "--backbone", "-b", help=f"Backbone of a --from checkpoint file when its layout does not say ({', '.join(BACKBONES)}); a run's config names its own."),
    checkpoint: str = typer.Option("auto", "--checkpoint", help="Which checkpoint of a --from run: auto (best.pt if there is one, else last.pt), best or last."),
    channel_order: str = typer.Option("auto", "--channel-order", help="ONNX --from: channel order its input wants, rgb or bgr (auto: from its metadata_props; lrfr feeds RGB faces and converts)."),
    layout: str | None = typer.Option(None, "--layout", help="ONNX --from: input layout nchw or nhwc (default: from its metadata, else its input shape)."),
    pixel_mean: str | None = typer.Option(None, "--pixel-mean", help="ONNX --from: input = (pixel - MEAN) / STD per channel (one number or three, in the file's channel order); with --pixel-std. Raw 0..255 pixels: --pixel-mean 0 --pixel-std 1. Default: from its metadata."),
    pixel_std: str | None = typer.Option(None, "--pixel-std", help="ONNX --from: the STD of --pixel-mean (insightface models: 127.5)."),
    embedding_size: int | None = typer.Option(None, "--embedding-size", min=2, help="Check: the embedding size you expect of --from (fine-tuning keeps the parent's size; a mismatch is an error)."),
    run_name: str | None = typer.Option(None, "--run", "--run-name", help="Run name: writes <workspace>/runs/RUN/ (default: METHOD-PARENT). Under torchrun spell it --run-name."),
    p: int = typer.Option(16, "--p", "--identities-per-batch", min=2, help="P: identities per batch (the batch is P × K faces, plus LR copies for octuplet, siamese and derivenet). Under torchrun spell it --identities-per-batch (torchrun takes --p for its --print-completion)."),
    k: int = typer.Option(4, "--k", "--images-per-identity", min=2, help="K: images per identity in a batch; at least P identities need K images (hard positives come from them)."),
    lr_sizes: str | None = typer.Option(None, "--lr-sizes", help="Heights in pixels the LR copies are down-sampled to (one drawn per face, then up-sampled back), e.g. 8,12,16,20 (default: the method's, listed below)."),
    loss: str | None = typer.Option(None, "--loss", "-l", help=f"Identity loss head where the method has one: {', '.join(heads())} (default: the method's, listed below)."),
    loss_opt: list[str] | None = typer.Option(None, "--loss-opt", help="An option of the identity loss as KEY=VALUE (repeatable), e.g. --loss-opt s=30 (see `lrfr train --help` for each loss's options)."),
    margin: float | None = typer.Option(None, "--margin", help="octuplet/siamese: the triplet margin on normalised embeddings (default 0.5)."),
    id_weight: float | None = typer.Option(None, "--id-weight", help="octuplet: weight of an added identity loss (--loss) on the HR and LR embeddings (default 0: octuplet only); distill: weight of its identity loss (default 1; 0 = pure feature distillation, no classifier)."),
    p_down: float | None = typer.Option(None, "--p-down", help="distill: probability that the student sees a face at low resolution (0..1, default 0.1)."),
    p_down_end: float | None = typer.Option(None, "--p-down-end", help="distill: curriculum, --p-down rises linearly to this value over the run (0..1; default: no curriculum)."),
    lam: float | None = typer.Option(None, "--lambda", help="distill: weight of the feature distance to the teacher (default 0.1); derivenet: weight of the ReCent loss (default 1e-3)."),
    feature_loss: str | None = typer.Option(None, "--feature-loss", help="distill: distance between student(LR) and teacher(HR) features, mse or cosine (default mse)."),
    method_opt: list[str] | None = typer.Option(None, "--method-opt", help="Any option of the method as KEY=VALUE (repeatable); the options of each method and their defaults are listed below."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone/--no-freeze-backbone", help="Train only the method's head (identity classifier, DeriveNet's classifier and reconstruction map); the backbone and its BatchNorm statistics stay the parent's."),
    epochs: int | None = typer.Option(None, "--epochs", "-e", min=1, help="Passes over the data (with --max-steps, whichever ends first). Default 2 when neither is given."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimiser steps."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate of the backbone (default 0.01 for sgd, 1e-4 for adamw: the parent is already trained)."),
    head_lr: float | None = typer.Option(None, "--head-lr", help="Peak learning rate of the method's fresh head (default 10 × --lr: it starts from random)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help=f"Optimiser: {', '.join(OPTIMIZERS)} (weight decay is not applied to BN/PReLU/bias)."),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum (AdamW beta1)."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", min=0.0, help="Weight decay."),
    schedule: str = typer.Option("cosine", "--schedule", help=f"LR decay after warm-up: {', '.join(SCHEDULES)}."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", min=0, help="Linear LR warm-up steps."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (under torchrun auto picks cuda:LOCAL_RANK)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="NHWC memory format (faster convolutions on recent GPUs)."),
    clip_grad: float | None = typer.Option(None, "--clip-grad", min=0.0, help="Clip the gradient norm to this value."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", min=1, help="Save checkpoints/last.pt every N steps (and at each epoch end and the end)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the new head, data order and on-device randomness (LR sizes, which faces are degraded)."),
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Data-loading worker processes (0 = load in the main process)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips."),
    cache: bool = typer.Option(False, "--cache", help="Pack the fine-tuning set once into a uint8 memmap in <workspace>/cache/ (shared with `lrfr train` on the same data)."),
    val_pairs: Path | None = typer.Option(None, "--val-pairs", help="Verification pairs checked after every epoch to keep best.pt (by val_acc), as for `lrfr train`."),
    val_root: Path | None = typer.Option(None, "--val-root", help="Image root of --val-pairs (default: lfw-deepfunneled/ beside the pairs file)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads of this process (0 = torch's default). On cores shared with other jobs, 1 can be many times faster."),
    log_every: int = typer.Option(10, "--log-every", min=1, help="Write a metrics.jsonl line (mean loss and the method's named terms) every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from checkpoints/last.pt. The same command re-run also resumes; add --force to resume with changed options."),
    force: bool = typer.Option(False, "--force", help="Start over, replacing a run of that name made with other options (with --resume: continue its checkpoint with the new options)."),
) -> None:
    """Fine-tune a trained model for low resolution (octuplet, DeriveNet, distillation, Siamese, CRB)."""
    st = state()
    ws = workspace()
    cls = method_class(method)
    method = cls.name
    for what, (value, allowed) in {"optimizer": (optimizer, OPTIMIZERS), "schedule": (schedule, SCHEDULES)}.items():
        if value.lower() not in allowed:
            raise LrfrError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
    optimizer, schedule = optimizer.lower(), schedule.lower()
    opts = resolve_options(method, _method_opts(method, {
        "--margin": ("margin", margin), "--id-weight": ("id_weight", id_weight), "--p-down": ("p_down", p_down),
        "--p-down-end": ("p_down_end", p_down_end), "--lambda": ("lam", lam), "--feature-loss": ("feature_loss", feature_loss),
    }, method_opt or []))
    # The identity head: the method's default loss and options unless --loss/--loss-opt say otherwise.
    id_loss = cls.identity_loss(loss, loss_opt or [], opts)
    if freeze_backbone and cls.default_loss is not None and id_loss is None:
        raise LrfrError(f"--freeze-backbone: method {method} has no head to train with these options, so nothing would change")
    try:
        sizes = tuple(sorted(set(parse_sizes(lr_sizes)))) if lr_sizes else cls.default_lr_sizes
    except LrfrError as e:
        raise LrfrError(str(e).replace("--sizes", "--lr-sizes")) from None
    bad = [s for s in sizes if s >= INPUT_SIZE]
    if bad:
        raise LrfrError(f"--lr-sizes: {bad[0]}px is not below the input height {INPUT_SIZE}px")
    if epochs is None and max_steps is None:
        epochs = 2
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)

    parent = load_parent(from_, ws.root, backbone, checkpoint, embedding_size,
                         {"channel_order": channel_order, "layout": layout, "pixel_mean": pixel_mean, "pixel_std": pixel_std})
    emb = parent.embedding_size
    name = run_name or f"{method}-{parent.name}"
    ts = resolve_training_data(data, data_root, ws.root, allow_outside_root=allow_outside_root)
    check_pk(ts.labels, p, k)
    pairs = validation_pairs(val_pairs, val_root) if val_pairs else None
    base_lr = lr if lr is not None else DEFAULT_LR[optimizer]
    if base_lr <= 0 or (head_lr is not None and head_lr <= 0):
        raise LrfrError("--lr and --head-lr must be > 0")
    head_scale = (head_lr / base_lr) if head_lr is not None else 10.0
    cfg = LoopConfig(
        global_batch=p * k, epochs=epochs, max_steps=max_steps, lr=base_lr, optimizer=optimizer, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps, precision=prec, channels_last=channels_last,
        compile=False, clip_grad=clip_grad, checkpoint_every=checkpoint_every, seed=seed, flip=flip, sampler="pk",
        images_per_identity=k, log_every=log_every, workers=workers,
    )
    if "ramp_steps" in opts and opts.get("p_down_end") is not None and int(opts["ramp_steps"]) == 0:
        opts["ramp_steps"] = plan_steps(batches_per_epoch("pk", ts.labels, cfg.global_batch, 1, k=k), cfg)
    if id_loss:
        id_loss.check(emb, ts.num_classes)  # fail on bad head options before claiming the run
    task_opts = {"freeze_backbone": freeze_backbone, "head_lr_scale": head_scale}
    parent_rec = {"name": parent.name, "source": parent.source, "backbone": parent.backbone,
                  "checkpoint": str(parent.checkpoint), "checkpoint_sha1": parent.sha1}
    if parent.source == "onnx":  # the file's sha256 and how its input is made from lrfr's faces
        parent_rec.update(sha256=parent.sha256, input_contract=parent.contract)
    config: dict[str, Any] = {
        "backbone": parent.backbone,
        "embedding_size": emb,
        "input_size": INPUT_SIZE,
        "preprocess": "RGB, (x/255 - 0.5) / 0.5" + (
            "; then inside the imported graph's wrapper: " + _contract_text(parent.contract) if parent.contract else ""),
        "method": method,
        "method_opts": opts,
        "loss": id_loss.name if id_loss else None,
        "head": id_loss.head_kw if id_loss else {},
        "lr_sizes": list(sizes),
        "pk": {"p": p, "k": k},
        "num_classes": ts.num_classes,
        "data": ts.source,
        "data_kind": ts.kind,
        "images": len(ts),
        "loop": cfg.identity(),
        "task": task_opts,
        "parent": parent_rec,
        "val_pairs": str(val_pairs) if val_pairs else None,
    }
    options = {key: v for key, v in config.items() if key not in ("data", "images", "parent")}
    inputs: dict[str, Any] = {"data": ts.fingerprint, "parent": {"checkpoint_sha1": parent.sha1}}
    if parent.contract:
        inputs["parent"]["input_contract"] = {k: parent.contract[k] for k in ("layout", "channel_order", "mean", "std")}
    if val_pairs:
        inputs["val_pairs"] = fingerprint_file(val_pairs)

    def build_task(ts: TrainingSet) -> Task:
        return build_method(
            method, copy.deepcopy(parent.module), embedding_size=emb, num_classes=ts.num_classes, lr_sizes=sizes,
            opts=opts, loss=id_loss, teacher=copy.deepcopy(parent.module) if cls.needs_teacher else None,
            **task_opts,
        )

    spec = TrainingRun(
        command="finetune", name=name, data=ts, cfg=cfg, config=config, options=options, inputs=inputs,
        build_task=build_task, validation=pair_validation(pairs, dev, prec) if pairs else None,
        cache=cache, resume=resume, force=force, threads=threads,
    )
    out = run_training(ws, spec, dev, progress=st.progress if st.show_progress else None)
    if not out.is_main:
        return
    c = out.counts
    record = {"command": "finetune", "run": name, "method": method, "parent": parent_rec, "path": str(out.path)}
    if out.up_to_date:
        st.summary(
            f"[green]up to date[/green] runs/{name}: {method} from {parent.name}, {c.get('steps')} steps, final loss {c.get('final_loss')} (--force to redo)",
            {**record, "up_to_date": True, **c},
        )
        return
    res = out.result
    assert res is not None
    val = f", best val acc {c['best_val_acc']:.4f}" if c.get("best_val_acc") is not None else ""
    fl = f"{res.first_loss:.3f}" if res.first_loss is not None else "-"
    ll = f"{res.loss:.3f}" if res.loss is not None else "-"
    resumed = f" (resumed from step {res.resumed_from})" if res.resumed_from is not None else ""
    st.summary(
        f"[green]fine-tuned[/green] runs/{name}: {method} from {parent.name} ({parent.sha1[:10]}), {res.step} steps{resumed}, "
        f"loss {fl} → {ll}, {res.images_per_s:,.0f} img/s{val} → {out.path}",
        {**record, "up_to_date": False, **c},
    )


def register(app: typer.Typer) -> None:
    app.command("finetune", epilog=methods_epilog())(finetune)
