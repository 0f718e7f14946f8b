"""``lrfr finetune``: a trained model (a run, a checkpoint file or an ONNX file) fine-tuned for
low resolution by one of the methods of :mod:`lrfr_cli.finetune`.

The run's ``config.json`` records the parent model and its checkpoint's sha1, which is also part
of the run's identity; batches are always P × K.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import TrainingSet, resolve_training_data
from ..data.samplers import batches_per_epoch
from ..embed import LoadedModel, resolve_model
from ..engine.loop import plan_steps
from ..engine.runner import TrainingRun, pair_validation
from ..engine.tasks import Task
from ..errors import LrfrError
from ..finetune import build_method, method_class, parse_method_opts, resolve_options
from ..finetune.base import check_pk
from ..losses.recipe import LossChoice
from ..models import INPUT_SIZE
from ..protocols.lfw import validation_pairs
from ..workspace import fingerprint_file
from .classify import lr_sizes
from .common import RunArgs, RunSummary, best_metric, loop_config

DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}


@dataclass
class FinetuneArgs(RunArgs):
    """``lrfr finetune``'s options."""

    method: str
    from_: str
    backbone: str | None
    checkpoint: str
    channel_order: str
    layout: str | None
    pixel_mean: str | None
    pixel_std: str | None
    embedding_size: int | None
    p: int
    k: int
    lr_sizes: str | None
    loss: str | None
    loss_opt: list[str] | None
    triplet_margin: float | None
    id_weight: float | None
    p_down: float | None
    p_down_end: float | None
    lam: float | None
    feature_loss: str | None
    method_opt: list[str] | None
    freeze_backbone: bool
    head_lr: float | None


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


def method_choice(a: FinetuneArgs) -> tuple[Any, dict[str, Any], LossChoice | None, tuple[int, ...]]:
    """The method, its options (flags and --method-opt), its identity loss and the LR sizes,
    checked before anything is loaded."""
    cls = method_class(a.method)
    a.check_loop_choices()
    opts = resolve_options(cls.name, parse_method_opts(cls.name, a.method_opt or [], flags={
        "--triplet-margin": ("margin", a.triplet_margin), "--id-weight": ("id_weight", a.id_weight), "--p-down": ("p_down", a.p_down),
        "--p-down-end": ("p_down_end", a.p_down_end), "--lambda": ("lam", a.lam), "--feature-loss": ("feature_loss", a.feature_loss),
    }))
    id_loss = cls.identity_loss(a.loss, a.loss_opt or [], opts)
    if a.freeze_backbone and cls.default_loss is not None and id_loss is None:
        raise LrfrError(f"--freeze-backbone: method {cls.name} has no head to train with these options, so nothing would change")
    sizes = tuple(sorted(set(lr_sizes(a.lr_sizes)))) if a.lr_sizes else cls.default_lr_sizes
    bad = [s for s in sizes if s >= INPUT_SIZE]
    if bad:
        raise LrfrError(f"--lr-sizes: {bad[0]}px is not below the input height {INPUT_SIZE}px")
    return cls, opts, id_loss, sizes


def parent_record(parent: LoadedModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json's record of the parent and the part of it that is the run's identity (its
    checkpoint's sha1 and, for an ONNX parent, how its input is made from lrfr's faces)."""
    rec = {"name": parent.name, "source": parent.source, "backbone": parent.backbone,
           "checkpoint": str(parent.checkpoint), "checkpoint_sha1": parent.sha1}
    ident: dict[str, Any] = {"checkpoint_sha1": parent.sha1}
    if parent.source == "onnx":  # the file's sha256 and how its input is made from lrfr's faces
        rec.update(sha256=parent.sha256, input_contract=parent.contract)
    if parent.contract:
        ident["input_contract"] = {k: parent.contract[k] for k in ("layout", "channel_order", "mean", "std")}
    return rec, ident


def finetune_run(a: FinetuneArgs, ws_root: Path, device: torch.device, precision: str) -> tuple[TrainingRun, RunSummary]:
    """The training run of ``lrfr finetune`` (every option checked before the run folder is claimed)."""
    cls, opts, id_loss, sizes = method_choice(a)
    method = cls.name
    parent = load_parent(a.from_, ws_root, a.backbone, a.checkpoint, a.embedding_size,
                         {"channel_order": a.channel_order, "layout": a.layout, "pixel_mean": a.pixel_mean, "pixel_std": a.pixel_std})
    emb = parent.embedding_size
    name = a.run_name or f"{method}-{parent.name}"
    ts = resolve_training_data(a.data, a.data_root, ws_root, allow_outside_root=a.allow_outside_root)
    check_pk(ts.labels, a.p, a.k)
    pairs = validation_pairs(a.val_pairs, a.val_root) if a.val_pairs else None
    base_lr = a.lr if a.lr is not None else DEFAULT_LR[a.optimizer]
    if base_lr <= 0 or (a.head_lr is not None and a.head_lr <= 0):
        raise LrfrError("--lr and --head-lr must be > 0")
    head_scale = (a.head_lr / base_lr) if a.head_lr is not None else 10.0
    cfg = loop_config(a, precision=precision, global_batch=a.p * a.k, default_epochs=2, default_lr=DEFAULT_LR,
                      sampler="pk", images_per_identity=a.k, lr=base_lr)
    if "ramp_steps" in opts and opts.get("p_down_end") is not None and int(opts["ramp_steps"]) == 0:
        opts["ramp_steps"] = plan_steps(batches_per_epoch("pk", ts.labels, cfg.global_batch, 1, k=a.k), cfg)
    if id_loss:
        id_loss.check(emb, ts.num_classes)  # fail on bad head options before claiming the run
    task_opts = {"freeze_backbone": a.freeze_backbone, "head_lr_scale": head_scale}
    parent_rec, parent_id = parent_record(parent)
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
        "pk": {"p": a.p, "k": a.k},
        "num_classes": ts.num_classes,
        "data": ts.source,
        "data_kind": ts.kind,
        "images": len(ts),
        "loop": cfg.identity(),
        "task": task_opts,
        "parent": parent_rec,
        "val_pairs": str(a.val_pairs) if a.val_pairs else None,
    }
    options = {key: v for key, v in config.items() if key not in ("data", "images", "parent")}
    inputs: dict[str, Any] = {"data": ts.fingerprint, "parent": parent_id}
    if a.val_pairs:
        inputs["val_pairs"] = fingerprint_file(a.val_pairs)

    def build_task(ts: TrainingSet) -> Task:
        return build_method(
            method, copy.deepcopy(parent.module), embedding_size=emb, num_classes=ts.num_classes, lr_sizes=sizes,
            opts=opts, loss=id_loss, teacher=copy.deepcopy(parent.module) if cls.needs_teacher else None,
            **task_opts,
        )

    spec = TrainingRun(
        command="finetune", name=name, data=ts, cfg=cfg, config=config, options=options, inputs=inputs,
        build_task=build_task, validation=pair_validation(pairs, device, precision) if pairs else None,
        cache=a.cache, resume=a.resume, force=a.force, threads=a.threads,
    )
    return spec, RunSummary(
        "finetune", verb="fine-tuned", what=f"{method} from {parent.name}",
        what_done=f"{method} from {parent.name} ({parent.sha1[:10]})", redo="redo",
        record={"method": method, "parent": parent_rec}, validation=best_metric("val_acc", "val acc"),
    )
