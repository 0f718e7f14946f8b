"""Runs of lrfr written by hand for tests: a ``runs/NAME/`` folder with ``checkpoints/last.pt``
and ``config.json``, as ``lrfr train`` leaves them, around a small backbone."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lrfr_cli.models import build_backbone


def randomise_weights(m: nn.Module, seed: int = 0) -> None:
    """He-scaled random weights, BN gains near 1 and small biases: the embeddings of different
    faces then differ (cosine ~0.5), as a trained net's do. Fresh BN statistics would not be
    tested by an export, and large random biases would collapse every face onto one vector."""
    g = torch.Generator().manual_seed(seed)
    for name, t in m.state_dict().items():
        if t.dtype.is_floating_point:
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.01 * torch.randn(t.shape, generator=g))
            elif name.endswith("weight") and t.ndim > 1:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.01 * torch.randn(t.shape, generator=g))


def tiny_run(ws: Path, name: str = "tiny", embedding_size: int = 512, *, randomise: bool = False,
             seed: int | None = None, loss: str | None = None) -> nn.Module:
    """``runs/NAME`` of the ``tiny`` backbone; ``seed`` seeds its initialisation, ``randomise``
    replaces it by :func:`randomise_weights`; ``loss`` goes into the config when given."""
    if seed is not None:
        torch.manual_seed(seed)
    net = build_backbone("tiny", embedding_size)
    if randomise:
        randomise_weights(net)
    run = ws / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    cfg = {"backbone": "tiny", "embedding_size": embedding_size, "input_size": 112}
    if loss is not None:
        cfg["loss"] = loss
    torch.save({"model": net.state_dict(), "config": cfg}, run / "checkpoints" / "last.pt")
    (run / "config.json").write_text(json.dumps(cfg))
    return net
