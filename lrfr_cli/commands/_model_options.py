"""Shared options whose help lists a registry that lives beside torch code (backbones, losses,
samplers, optimisers, schedules); the training and model commands import them, the light
commands do not (see :mod:`._options`)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..data.samplers import SAMPLERS
from ..engine.optim import OPTIMIZERS, SCHEDULES
from ..losses import heads
from ..models import BACKBONES

Sampler = Annotated[str, typer.Option(
    "--sampler", help="Batch sampler: " + "; ".join(f"{k}: {v.summary}" for k, v in SAMPLERS.items()) + ".")]

Backbone = Annotated[str, typer.Option(
    "--backbone", help=f"Backbone: {', '.join(BACKBONES)} (mobilefacenet trains on a CPU; tiny is a small net for "
    "tests and quick demos).")]

CheckpointBackbone = Annotated[str | None, typer.Option(
    "--backbone", help=f"Network of an external checkpoint file when its layout does not say: {', '.join(BACKBONES)} "
    "(default: the one whose parameters fit; a run's config names its own).")]

Loss = Annotated[str | None, typer.Option(
    "--loss", "-l", help=f"Loss head: {', '.join(heads())} (train default arcface; finetune: the identity loss of "
    "methods that have one, default the method's). Each loss is described in `lrfr train --help`.")]

Optimizer = Annotated[str, typer.Option(
    "--optimizer", help=f"Optimiser: {', '.join(OPTIMIZERS)} (weight decay is not applied to BN/PReLU/bias).")]

Schedule = Annotated[str, typer.Option(
    "--schedule", help=f"LR decay after warm-up: {', '.join(SCHEDULES)} (step: x0.1 at 60% and 85%; poly: power 2).")]
