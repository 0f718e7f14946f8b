"""``lrfr train``: a face-embedding model (``--task classify``) or a face super-resolution network
(``--task sr``) from an aligned training set into ``runs/RUN/``.

Options (shared ones from :mod:`._options`) → a recipe of :data:`TASKS` → its
:class:`~lrfr_cli.engine.runner.TrainingRun` → :func:`._training.train_with` → one summary line.
Everything else (artifact, resume, DDP, cache, validation) is the runner's.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..data.crb import CRB_MODE_HELP
from ..data.quality import QUALITY_HELP
from ..losses import describe_losses
from ..recipes import TASKS
from ..recipes.classify import TrainArgs
from . import _model_options as mopt
from . import _options as opt
from ._common import handle_errors, state, workspace
from ._deprecated import old_spelling, prefer
from ._training import train_with

SR = "--task sr"


def losses_epilog() -> str:
    """``--help``'s list of losses, one line each (options with defaults: what it is for)."""
    return "Losses (--loss NAME, options set with --loss-opt KEY=VALUE):\n\n" + "\n\n".join(f"  {line}" for line in describe_losses())


@handle_errors
def train(
    data: opt.Data,
    data_root: opt.DataRoot = None,
    allow_outside_root: opt.AllowOutsideRoot = False,
    backbone: mopt.Backbone = "ir50",
    loss: mopt.Loss = "arcface",
    loss_opt: opt.LossOpt = None,
    run_name: opt.RunName = None,
    epochs: opt.Epochs = None,
    max_steps: opt.MaxSteps = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="GLOBAL batch size; under torchrun each of N processes takes batch/N.")] = 128,
    sampler: mopt.Sampler = "epoch",
    images_per_identity: Annotated[int, typer.Option("--images-per-identity", min=1, help="K of --sampler pk: images of each identity in a batch (batch/K identities per batch).")] = 4,
    lr: opt.Lr = None,
    head_lr_scale: Annotated[float, typer.Option("--head-lr-scale", min=0.0, help="The head's learning rate is --lr times this (e.g. 10 for a fresh head on a pretrained backbone).")] = 1.0,
    freeze_backbone: opt.FreezeBackbone = False,
    optimizer: mopt.Optimizer = "sgd",
    momentum: opt.Momentum = 0.9,
    weight_decay: opt.WeightDecay = 5e-4,
    schedule: mopt.Schedule = "cosine",
    warmup_steps: opt.WarmupSteps = 0,
    margin: Annotated[float | None, typer.Option("--margin", help="Margin m of the loss (same as --loss-opt m=VALUE; defaults below).")] = None,
    scale: Annotated[float | None, typer.Option("--scale", help="Logit scale s of margin losses (same as --loss-opt s=VALUE; default 64).")] = None,
    crb: Annotated[bool | None, typer.Option("--crb/--no-crb", help="Mix each batch with low-resolution versions of its faces, made on the device (default: on for the losses that need it, approach1/2).")] = None,
    lr_sizes: opt.LrSizes = None,
    crb_mode: Annotated[str, typer.Option("--crb-mode", help=f"CRB mode: {CRB_MODE_HELP}")] = "copies",
    lr_prob: Annotated[float, typer.Option("--lr-prob", help="CRB split mode: the share of each batch replaced by LR versions (0..1).")] = 0.5,
    classifier: Annotated[str, typer.Option("--classifier", help="Class weights: full (on every process) or sharded (under torchrun each process holds 1/N of the classes: for 100k+ identities, margin losses only). Checkpoints hold the full matrix either way.")] = "full",
    sample_rate: Annotated[float, typer.Option("--sample-rate", help="--classifier sharded: share of the classes in each step's softmax (Partial FC's negative sampling; the batch's own classes are always in). 1 = exact softmax.")] = 1.0,
    quality: Annotated[str | None, typer.Option("--quality", help=f"approach2's image quality (same as --loss-opt quality=VALUE): {QUALITY_HELP}")] = None,
    embedding_size: opt.EmbeddingSize = 512,
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    channels_last: opt.ChannelsLast = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (slow first steps, faster after).")] = False,
    clip_grad: opt.ClipGrad = None,
    checkpoint_every: opt.CheckpointEvery = 500,
    seed: opt.Seed = 0,
    workers: opt.Workers = 2,
    flip: opt.Flip = True,
    cache: opt.Cache = False,
    val_pairs: opt.ValPairs = None,
    val_root: opt.ValRoot = None,
    val_bin: Annotated[str | None, typer.Option("--val-bin", help="insightface .bin packs to validate on, comma-separated (lfw.bin,cfp_fp.bin,agedb_30.bin), or 'auto': the *.bin files of a RecordIO --data folder. Scored as peers do: 10-fold accuracy, flip fusion.")] = None,
    val_bin_channels: Annotated[str, typer.Option("--val-bin-channels", help="Channel order of the packs' images: rgb (normal JPEG/PNG: insightface's packs, lrfr make-bin) or bgr (red and blue swapped in the files).")] = "rgb",
    val_sizes: Annotated[str | None, typer.Option("--val-sizes", help="Also validate with the second face of each pair down-sampled to these heights and back (hr-lr, bicubic), e.g. 16 or 8,16: metrics val_acc/SET@SIZE.")] = None,
    val_every: Annotated[int, typer.Option("--val-every", min=0, help="Validate every N steps (and at the end) instead of after every epoch (0).")] = 0,
    val_metric: Annotated[str, typer.Option("--val-metric", help="The metric that picks best.pt: val_acc (mean over every set and size) or val_acc/SET, val_acc/SET@SIZE (SET: a .bin's file stem or the --val-pairs file's).")] = "val_acc",
    threads: opt.Threads = 0,
    log_every: opt.LogEvery = 10,
    task: Annotated[str, typer.Option("--task", help="classify: a face-embedding backbone with a margin loss; sr: a face super-resolution network (LR faces made at --lr-sizes, scored by PSNR/SSIM on the list's val.txt; try --optimizer adamw --lr 1e-3).")] = "classify",
    arch: Annotated[str, typer.Option("--arch", help=f"{SR}: network, srcnn (3 layers, fast on a CPU) or srresnet (SRGAN's generator; allows --adversarial/--perceptual).")] = "srcnn",
    sr_loss: Annotated[str, typer.Option("--sr-loss", help=f"{SR}: content loss between SR and HR faces, l1 or mse.")] = "l1",
    perceptual: Annotated[str | None, typer.Option("--perceptual", help=f"{SR} --arch srresnet: runs/RUN of a recognition model whose frozen embedding keeps SR faces' identity (loss 1 - cos).")] = None,
    perceptual_weight: Annotated[float, typer.Option("--perceptual-weight", min=0.0, help=f"{SR}: weight of the --perceptual loss.")] = 0.1,
    adversarial: Annotated[float, typer.Option("--adversarial", min=0.0, help=f"{SR} --arch srresnet: weight of the SRGAN adversarial loss (0 = off; the paper uses 1e-3).")] = 0.0,
    disc_lr_scale: Annotated[float, typer.Option("--disc-lr-scale", min=0.0, help=f"{SR}: the discriminator's learning rate is --lr times this.")] = 1.0,
    sr_val_images: Annotated[int, typer.Option("--sr-val-images", min=1, help=f"{SR}: held-out faces of the list's val.txt scored after each epoch (spread over the file).")] = 256,
    sr_patch: Annotated[int, typer.Option("--sr-patch", min=0, help=f"{SR}: train on random windows of this many pixels cut from the LR input and HR target (0 = whole faces; --perceptual needs 0).")] = 48,
    resume: opt.Resume = False,
    force: opt.ForceRun = False,
    old_backbone: Annotated[str | None, old_spelling("-b", "--backbone")] = None,
) -> None:
    """Train a face-embedding backbone with a margin loss; resumable, DDP under torchrun."""
    backbone = prefer("train", backbone, old_backbone, new_flag="--backbone", old_flag="-b", default="ir50",
                      why="-b is --batch-size in the other commands")
    a = TrainArgs.from_params(locals())
    recipe = TASKS.get(a.task)
    a.check_choices()
    train_with(state(), workspace(), device, precision, lambda ws_root, dev, prec: recipe(a, ws_root, dev, prec))


def register(app: typer.Typer) -> None:
    app.command("train", epilog=losses_epilog())(train)

