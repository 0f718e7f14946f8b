"""``lrfr train --task classify``: a face-embedding backbone with a margin loss.

The loss answers what it needs (:func:`~lrfr_cli.losses.recipe.resolve_loss`: its options, CRB
policy, batch fields, plain or sharded build); this module adds the data, the validation sets and
the run's identity, and returns the :class:`~lrfr_cli.engine.runner.TrainingRun`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.batch_fields import CrossResolutionBatches
from ..data.crb import check_crb_options
from ..data.datasets import TrainingSet, resolve_training_data
from ..data.degrade import parse_sizes
from ..data.samplers import SAMPLERS
from ..engine.loop import LoopConfig
from ..engine.runner import TrainingRun, pair_validation
from ..engine.tasks import ClassifierTask, Task
from ..errors import LrfrError
from ..losses.recipe import resolve_loss
from ..models import BACKBONES, INPUT_SIZE, build_backbone
from ..protocols.lfw import validation_pairs
from ..registry import check_choice
from ..workspace import fingerprint_file
from .common import RunArgs, RunSummary, best_metric, loop_config

DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}


@dataclass
class TrainArgs(RunArgs):
    """``lrfr train``'s options (those of every ``--task``)."""

    task: str
    backbone: str
    loss: str
    loss_opt: list[str] | None
    batch_size: int
    sampler: str
    images_per_identity: int
    head_lr_scale: float
    freeze_backbone: bool
    margin: float | None
    scale: float | None
    crb: bool | None
    lr_sizes: str | None
    crb_mode: str
    lr_prob: float
    classifier: str
    sample_rate: float
    quality: str | None
    embedding_size: int | None
    compile_: bool
    val_bin: str | None
    val_bin_channels: str
    val_sizes: str | None
    val_every: int
    val_metric: str
    arch: str
    sr_loss: str
    perceptual: str | None
    perceptual_weight: float
    adversarial: float
    disc_lr_scale: float
    sr_val_images: int
    sr_patch: int

    def loop_config(self, precision: str) -> LoopConfig:
        """The loop of every ``--task``: the global batch, the sampler, 20 epochs by default."""
        return loop_config(self, precision=precision, global_batch=self.batch_size, default_epochs=20, default_lr=DEFAULT_LR,
                           sampler=self.sampler, images_per_identity=self.images_per_identity, compile=self.compile_)

    def check_choices(self) -> None:
        """Every NAME option of ``lrfr train``, canonical, before any work (one error each)."""
        self.backbone, self.sampler = BACKBONES.key(self.backbone), SAMPLERS.key(self.sampler)
        self.check_loop_choices()


def classify_run(a: TrainArgs, ws_root: Path, device: torch.device, precision: str) -> tuple[TrainingRun, RunSummary]:
    """The training run of ``lrfr train --task classify``; every option is checked before the
    run folder is claimed (a 2-class probe head for the sharded classifier: the full matrix may
    not fit)."""
    loss = resolve_loss(a.loss, a.loss_opt or [], margin=a.margin, scale=a.scale, quality=a.quality,
                        classifier=a.classifier, sample_rate=a.sample_rate)
    use_crb = loss.crb_enabled(a.crb)
    crb_cfg = None
    if use_crb:
        sizes = check_crb_options(lr_sizes(a.lr_sizes), a.crb_mode, a.lr_prob, height=INPUT_SIZE)
        crb_cfg = {"sizes": list(sizes), "mode": a.crb_mode, "lr_prob": a.lr_prob}
    embedding_size = a.embedding_size or 512
    name = a.run_name or f"{loss.name}-{a.backbone}"
    ts = resolve_training_data(a.data, a.data_root, ws_root, allow_outside_root=a.allow_outside_root)
    pairs = validation_pairs(a.val_pairs, a.val_root) if a.val_pairs else None
    validation_cfg, val_files, packs = validation_options(ts, a)
    loss.check(embedding_size, ts.num_classes)
    cfg = a.loop_config(precision)
    task_opts = {"freeze_backbone": a.freeze_backbone, "head_lr_scale": a.head_lr_scale}
    config: dict[str, Any] = {
        "backbone": a.backbone, "embedding_size": embedding_size, "input_size": INPUT_SIZE,
        "preprocess": "RGB, (x/255 - 0.5) / 0.5", "loss": loss.name, "head": loss.head_kw,
        "num_classes": ts.num_classes, "data": ts.source, "data_kind": ts.kind, "images": len(ts),
        "loop": cfg.identity(), "val_pairs": str(a.val_pairs) if a.val_pairs else None,
    }
    if validation_cfg:  # only when used: earlier runs keep their identity
        config["validation"] = validation_cfg
    # config.json says whether batches were mixed and why (a loss's default, or a flag); the
    # identity below keeps only what changes the batches, so earlier runs keep theirs.
    config["crb"] = {"enabled": use_crb, "why": loss.crb_reason(a.crb), **(crb_cfg or {})}
    if task_opts != {"freeze_backbone": False, "head_lr_scale": 1.0}:
        config["task"] = task_opts  # only when changed: earlier runs keep their identity
    if loss.classifier == "sharded":  # only when sharded: earlier runs keep their identity
        config["classifier"] = {"kind": "sharded", "sample_rate": loss.sample_rate}
    options = {k: v for k, v in config.items() if k not in ("data", "images", "crb")}
    if crb_cfg:
        options["crb"] = crb_cfg  # only when on: runs without CRB keep their earlier identity
    inputs: dict[str, Any] = {"data": ts.fingerprint}
    if a.val_pairs:
        inputs["val_pairs"] = fingerprint_file(a.val_pairs)
    if val_files:
        inputs["val_bin"] = [fingerprint_file(f) for f in val_files]

    def build_task(ts: TrainingSet) -> Task:
        model = build_backbone(a.backbone, embedding_size)
        head = loss.build(embedding_size, ts.num_classes, seed=a.seed)
        transforms = [CrossResolutionBatches(**crb_cfg)] if crb_cfg else []
        return ClassifierTask(model, head, transforms=transforms, **task_opts)

    validation = None
    if pairs or packs:
        validation = pair_validation(pairs, device, precision, bins=packs, channels=a.val_bin_channels.lower(), every=a.val_every,
                                     metric=a.val_metric, sizes=validation_cfg.get("sizes", ()),
                                     pairs_name=Path(a.val_pairs).stem if a.val_pairs else "pairs")
    spec = TrainingRun(command="train", name=name, data=ts, cfg=cfg, config=config, options=options, inputs=inputs,
                       build_task=build_task, validation=validation, cache=a.cache, resume=a.resume, force=a.force,
                       threads=a.threads)
    return spec, RunSummary("train", validation=best_metric(a.val_metric))


def lr_sizes(text: str | None, default: tuple[int, ...] = (16,)) -> list[int]:
    """``--lr-sizes`` as heights (the parse error names the flag)."""
    if text is None:
        return list(default)
    try:
        return parse_sizes(text)
    except LrfrError as e:
        raise LrfrError(str(e).replace("--sizes", "--lr-sizes")) from None


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


def validation_options(ts: TrainingSet, a: TrainArgs) -> tuple[dict[str, Any], list[Path], list[Any]]:
    """Checks the validation options before any training (bad packs fail here, on every rank):
    ``(config.json's validation block (empty: the defaults), the .bin files, their packs)``."""
    from ..data.binfile import check_channels, read_bin
    from ..engine.validate import metric_names

    files = val_bin_files(a.val_bin, ts) if a.val_bin else []
    check_channels(a.val_bin_channels, "--val-bin-channels")
    packs = [read_bin(f) for f in files]
    try:
        sizes = parse_sizes(a.val_sizes) if a.val_sizes else []
    except LrfrError as e:
        raise LrfrError(str(e).replace("--sizes", "--val-sizes")) from None
    if any(s >= INPUT_SIZE for s in sizes):
        raise LrfrError(f"--val-sizes: probe sizes must be below the {INPUT_SIZE} px input (HR is always validated)")
    names = ([Path(a.val_pairs).stem] if a.val_pairs else []) + [p.name for p in packs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LrfrError(f"--val-bin: two validation sets named {dup[0]!r} (metrics are named after the file stem); rename one")
    if not names and (a.val_sizes or a.val_every or a.val_metric != "val_acc"):
        raise LrfrError("--val-sizes, --val-every and --val-metric need --val-pairs or --val-bin")
    known = metric_names(names, sizes) if (packs or sizes) else ["val_acc"]
    check_choice(a.val_metric, known, "--val-metric")
    cfg: dict[str, Any] = {}
    if files:
        cfg.update(bins=[str(f) for f in files], channels=a.val_bin_channels.lower())
    if sizes:
        cfg["sizes"] = sizes
    if a.val_every:
        cfg["every"] = a.val_every
    if a.val_metric != "val_acc":
        cfg["metric"] = a.val_metric
    return cfg, files, packs
