"""Options that more than one command takes, declared once.

A command writes ``epochs: opt.Epochs = None`` and gets the flag, its short form, its checks and
its help from here, so ``lrfr train`` and ``lrfr finetune`` cannot drift apart again (they had 33
options in common, 19 with differing help). Defaults stay in the command's signature: they are
what differs between commands (``--epochs`` 20 for train, 2 for finetune). Options that only
look alike but mean different things per command (``--force``: what is redone; ``--out``: what
is written) stay with their command.

Short flags have one meaning across lrfr: ``-d`` data, ``-m`` model, ``-b`` batch size, ``-e``
epochs, ``-j`` workers, ``-l`` loss, ``-o`` out, ``-s`` low-resolution size(s), ``-f`` format,
``-n`` name, ``-r`` runs, ``-p`` pairs. Spellings that meant something else keep working for one
release through :mod:`._deprecated`.

Nothing here imports torch, so the light commands (``make-list``, ``report``) may use it; the
options whose help lists torch-backed registries (backbones, losses, ...) are in
:mod:`._model_options`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..data.filters import METHOD_HELP

# --------------------------------------------------------------------------- data and run
Data = Annotated[str, typer.Option(
    "--data", "-d",
    help="Training set: lists/NAME, a list file (see --data-root), an identity folder ROOT/<identity>/<image>, "
    "aligned/NAME or an insightface RecordIO folder (train.rec + train.idx).")]
DataRoot = Annotated[Path | None, typer.Option(
    "--data-root", help="Folder the list's paths are relative to (default: the root recorded in the list's labels.json).")]
AllowOutsideRoot = Annotated[bool, typer.Option(
    "--allow-outside-root", help="Accept list entries that resolve outside the list's data root.")]
RunName = Annotated[str | None, typer.Option(
    "--run", "--run-name",
    help="Run name: writes <workspace>/runs/RUN/ (default: LOSS-BACKBONE for train, METHOD-PARENT for finetune). "
    "Under torchrun spell it --run-name (torchrun takes --run for its --run-path).")]
Flip = Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")]
Cache = Annotated[bool, typer.Option(
    "--cache", help="Pack the training set once into a uint8 memmap in <workspace>/cache/ so training is not JPEG-bound "
    "(shared by train and finetune runs on the same data).")]
Workers = Annotated[int, typer.Option(
    "--workers", "-j", min=0, help="Data-loading worker processes (0 = load in the main process).")]
Seed = Annotated[int, typer.Option(
    "--seed", help="Seed of initialisation (a new head), data order and on-device randomness such as LR sizes "
    "(same seed, same run on CPU).")]

# --------------------------------------------------------------------------- model and loss
Checkpoint = Annotated[str, typer.Option(
    "--checkpoint", help="Which checkpoint of a run: auto (best.pt if there is one, else last.pt), best or last.")]
EmbeddingSize = Annotated[int | None, typer.Option(
    "--embedding-size", min=2, help="Embedding dimension (train: of the new model, default 512; finetune: a check, "
    "fine-tuning keeps the parent's size).")]
LossOpt = Annotated[list[str] | None, typer.Option(
    "--loss-opt", help="A loss option as KEY=VALUE (repeatable), e.g. --loss-opt m=0.4 or s=30; each loss's options "
    "and defaults are listed in `lrfr train --help`.")]
LrSizes = Annotated[str | None, typer.Option(
    "--lr-sizes", help="Heights in pixels the LR copies are down-sampled to (one drawn per face, then up-sampled "
    "back), e.g. 8,12,16,20 (default: 16 for train; the method's for finetune).")]
FreezeBackbone = Annotated[bool, typer.Option(
    "--freeze-backbone/--no-freeze-backbone",
    help="Train the head only: the backbone's weights and BatchNorm statistics stay as they start.")]

# --------------------------------------------------------------------------- the loop
Epochs = Annotated[int | None, typer.Option(
    "--epochs", "-e", min=1, help="Passes over the data (with --max-steps, whichever ends first). "
    "Default when neither is given: 20 for train, 2 for finetune.")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimiser steps.")]
Lr = Annotated[float | None, typer.Option(
    "--lr", help="Peak learning rate (default: train 0.1 for sgd, 1e-3 for adamw; finetune 0.01 for sgd, 1e-4 for "
    "adamw, as the parent is already trained).")]
Momentum = Annotated[float, typer.Option("--momentum", help="SGD momentum (AdamW beta1).")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", min=0.0, help="Weight decay.")]
WarmupSteps = Annotated[int, typer.Option("--warmup-steps", min=0, help="Linear LR warm-up steps.")]
ClipGrad = Annotated[float | None, typer.Option("--clip-grad", min=0.0, help="Clip the gradient norm to this value.")]
CheckpointEvery = Annotated[int, typer.Option(
    "--checkpoint-every", min=1, help="Save checkpoints/last.pt every N steps (and at each epoch end and the end).")]
LogEvery = Annotated[int, typer.Option(
    "--log-every", min=1, help="Write a metrics.jsonl line (mean loss and the loss's named terms) every N steps.")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue the run from checkpoints/last.pt (an error if there is none). The same command re-run "
    "also resumes; add --force to resume with changed options (e.g. a lower --lr).")]
ForceRun = Annotated[bool, typer.Option(
    "--force", help="Start over, replacing a run of that name made with other options (with --resume: continue its "
    "checkpoint with the new options).")]

# --------------------------------------------------------------------------- validation
ValPairs = Annotated[Path | None, typer.Option(
    "--val-pairs", help="Verification pairs checked after every epoch to keep best.pt (by val_acc): LFW format "
    "(e.g. lfw/pairsDevTest.txt) or 'path1 path2 0|1' lines.")]
ValRoot = Annotated[Path | None, typer.Option(
    "--val-root", help="Image root of --val-pairs (default: lfw-deepfunneled/ beside the pairs file). Non-112-px "
    "images are centre-cropped.")]

# --------------------------------------------------------------------------- the machine
Device = Annotated[str, typer.Option(
    "--device", help="auto, cpu, cuda or cuda:N (under torchrun auto picks cuda:LOCAL_RANK).")]
Precision = Annotated[str, typer.Option(
    "--precision", help="fp32, bf16 (autocast) or fp16 (autocast; GradScaler when training; CUDA only).")]
ChannelsLast = Annotated[bool, typer.Option(
    "--channels-last", help="NHWC memory format (faster convolutions on recent GPUs).")]
Threads = Annotated[int, typer.Option(
    "--threads", min=0, help="CPU threads of this process (0 = torch's default, all cores). On cores shared with other "
    "jobs, 1 can be many times faster: busy cores stall multi-threaded kernels.")]

# --------------------------------------------------------------------------- an ONNX model's input
ChannelOrder = Annotated[str, typer.Option(
    "--channel-order", help="Channel order the model expects: auto (bgr for AdaFace-layout checkpoints, an ONNX file's "
    "metadata, else rgb), rgb (insightface, ours) or bgr. lrfr feeds RGB faces and converts.")]
OnnxLayout = Annotated[str | None, typer.Option(
    "--layout", help="ONNX model: input layout nchw or nhwc (default: its metadata, else its input shape).")]
PixelMean = Annotated[str | None, typer.Option(
    "--pixel-mean", help="ONNX model: its input is (pixel - MEAN) / STD (one number or three, in its channel order), "
    "with --pixel-std; raw 0..255 pixels: --pixel-mean 0 --pixel-std 1. Default: its metadata.")]
PixelStd = Annotated[str | None, typer.Option(
    "--pixel-std", help="ONNX model: the STD of --pixel-mean (insightface models: 127.5).")]

# --------------------------------------------------------------------------- images in, LR images made
Ext = Annotated[str | None, typer.Option(
    "--ext", help="Comma-separated input extensions (default: jpg,jpeg,png,bmp,webp,tif,tiff,ppm,pgm).")]
DownMethod = Annotated[str, typer.Option("--down-method", help=f"Down-sampling filter of the LR images. {METHOD_HELP}")]
Blur = Annotated[float, typer.Option(
    "--blur", min=0.0, help="Gaussian blur sigma (source pixels) applied before down-sampling; 0 = none.")]
Noise = Annotated[float, typer.Option(
    "--noise", min=0.0, help="Gaussian noise std (0..255 units) added to the LR image; deterministic per image path "
    "and --seed.")]
Jpeg = Annotated[int | None, typer.Option(
    "--jpeg", min=1, max=100, help="Re-encode the LR image as JPEG at this quality (1..100).")]
JpegQuality = Annotated[int, typer.Option(
    "--jpeg-quality", min=1, max=100, help="JPEG quality of the faces written as JPEG.")]
