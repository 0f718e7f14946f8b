"""``lrfr finetune``: fine-tune a trained model for low resolution (octuplet, DeriveNet,
distillation, Siamese, CRB).

``lrfr finetune --method NAME --from runs/RUN|CHECKPOINT|MODEL.onnx --data ...`` writes
``runs/NAME/`` as ``lrfr train`` does (``eval`` and ``report`` treat it as any run). Options
(shared ones from :mod:`._options`) → :func:`~lrfr_cli.recipes.finetune.finetune_run` →
:func:`._training.train_with` → one summary line.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..finetune import METHODS, describe_methods
from ..recipes.finetune import FinetuneArgs, finetune_run
from . import _model_options as mopt
from . import _options as opt
from ._common import handle_errors, state, workspace
from ._deprecated import old_spelling, prefer, require
from ._training import train_with


def methods_epilog() -> str:
    return "Methods (--method NAME; other options with --method-opt KEY=VALUE):\n\n" + "\n\n".join(f"  {line}" for line in describe_methods())


@handle_errors
def finetune(
    method: Annotated[str | None, typer.Option("--method", help=f"Fine-tuning method (required): {', '.join(METHODS)} (each is described below the options).")] = None,
    from_: Annotated[str, typer.Option("--from", help="The model to start from: runs/RUN (a complete run of this workspace), a .pt/.pth checkpoint that `lrfr eval --model` loads (insightface, face.evoLVe; add --backbone if it is ambiguous), or an .onnx file (converted to a trainable torch module; --layout, --channel-order, --pixel-mean, --pixel-std where its metadata does not say).")] = ...,  # type: ignore[assignment]
    data: opt.Data = ...,  # type: ignore[assignment]
    data_root: opt.DataRoot = None,
    allow_outside_root: opt.AllowOutsideRoot = False,
    backbone: mopt.CheckpointBackbone = None,
    checkpoint: opt.Checkpoint = "auto",
    channel_order: opt.ChannelOrder = "auto",
    layout: opt.OnnxLayout = None,
    pixel_mean: opt.PixelMean = None,
    pixel_std: opt.PixelStd = None,
    embedding_size: opt.EmbeddingSize = None,
    run_name: opt.RunName = None,
    p: Annotated[int, typer.Option("--p", "--identities-per-batch", min=2, help="P: identities per batch (the batch is P × K faces, plus LR copies for octuplet, siamese and derivenet). Under torchrun spell it --identities-per-batch (torchrun takes --p for its --print-completion).")] = 16,
    k: Annotated[int, typer.Option("--k", "--images-per-identity", min=2, help="K: images per identity in a batch; at least P identities need K images (hard positives come from them).")] = 4,
    lr_sizes: opt.LrSizes = None,
    loss: mopt.Loss = None,
    loss_opt: opt.LossOpt = None,
    triplet_margin: Annotated[float | None, typer.Option("--triplet-margin", help="octuplet/siamese: the triplet margin on normalised embeddings (default 0.5).")] = None,
    id_weight: Annotated[float | None, typer.Option("--id-weight", help="octuplet: weight of an added identity loss (--loss) on the HR and LR embeddings (default 0: octuplet only); distill: weight of its identity loss (default 1; 0 = pure feature distillation, no classifier).")] = None,
    p_down: Annotated[float | None, typer.Option("--p-down", help="distill: probability that the student sees a face at low resolution (0..1, default 0.1).")] = None,
    p_down_end: Annotated[float | None, typer.Option("--p-down-end", help="distill: curriculum, --p-down rises linearly to this value over the run (0..1; default: no curriculum).")] = None,
    lam: Annotated[float | None, typer.Option("--lambda", help="distill: weight of the feature distance to the teacher (default 0.1); derivenet: weight of the ReCent loss (default 1e-3).")] = None,
    feature_loss: Annotated[str | None, typer.Option("--feature-loss", help="distill: distance between student(LR) and teacher(HR) features, mse or cosine (default mse).")] = None,
    method_opt: Annotated[list[str] | None, typer.Option("--method-opt", help="Any option of the method as KEY=VALUE (repeatable); the options of each method and their defaults are listed below.")] = None,
    freeze_backbone: opt.FreezeBackbone = False,
    epochs: opt.Epochs = None,
    max_steps: opt.MaxSteps = None,
    lr: opt.Lr = None,
    head_lr: Annotated[float | None, typer.Option("--head-lr", help="Peak learning rate of the method's fresh head (default 10 × --lr: it starts from random).")] = None,
    optimizer: mopt.Optimizer = "sgd",
    momentum: opt.Momentum = 0.9,
    weight_decay: opt.WeightDecay = 5e-4,
    schedule: mopt.Schedule = "cosine",
    warmup_steps: opt.WarmupSteps = 0,
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    channels_last: opt.ChannelsLast = False,
    clip_grad: opt.ClipGrad = None,
    checkpoint_every: opt.CheckpointEvery = 500,
    seed: opt.Seed = 0,
    workers: opt.Workers = 2,
    flip: opt.Flip = True,
    cache: opt.Cache = False,
    val_pairs: opt.ValPairs = None,
    val_root: opt.ValRoot = None,
    threads: opt.Threads = 0,
    log_every: opt.LogEvery = 10,
    resume: opt.Resume = False,
    force: opt.ForceRun = False,
    old_method: Annotated[str | None, old_spelling("-m", "--method")] = None,
    old_backbone: Annotated[str | None, old_spelling("-b", "--backbone")] = None,
    old_margin: Annotated[float | None, old_spelling("--margin", "--triplet-margin")] = None,
) -> None:
    """Fine-tune a trained model for low resolution (octuplet, DeriveNet, distillation, Siamese, CRB)."""
    method = require(prefer("finetune", method, old_method, new_flag="--method", old_flag="-m", why="-m is --model in the other commands"), "--method")
    backbone = prefer("finetune", backbone, old_backbone, new_flag="--backbone", old_flag="-b", why="-b is --batch-size in the other commands")
    triplet_margin = prefer("finetune", triplet_margin, old_margin, new_flag="--triplet-margin", old_flag="--margin",
                            why="--margin is the loss margin in lrfr train")
    a = FinetuneArgs.from_params(locals())
    train_with(state(), workspace(), device, precision, lambda ws_root, dev, prec: finetune_run(a, ws_root, dev, prec))


def register(app: typer.Typer) -> None:
    app.command("finetune", epilog=methods_epilog())(finetune)
