"""Cross-Resolution Batches (CRB): mix each batch's HR faces with low-resolution versions on the device.

An LR sample is its HR face degraded by :func:`lrfr_cli.data.degrade.degrade_batch`: down-sampled
to ``size`` px high with ``method`` (anti-aliased bicubic by default), rounded to uint8, and
up-sampled back to the input size (bicubic), with the *same label*. Two modes:

- ``copies``: the batch is doubled — the B HR images first, then one LR copy of each (row
  ``B + i`` is a copy of row ``i``);
- ``split`` (the thesis seed's): ``k = floor(lr_prob·B + 0.5)`` rows, chosen at random, are
  replaced in place by their LR versions; the batch size stays B.

Each LR sample's size is drawn uniformly from ``sizes`` (the seed used a single 16). All random
choices (which rows, which sizes) are drawn on the CPU from a generator seeded by the given
generator's seed (``generator.initial_seed()``, or an int seed), so a CPU and a GPU run with the
same per-step seed build the same batch; the images never leave their device, and
``degrade_batch`` runs once per distinct size.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..errors import LrfrError
from ..registry import check_choice
from .degrade import DegradeSpec, degrade_batch
from .filters import METHODS

CRB_MODES = ("copies", "split")
CRB_MODE_HELP = (
    "copies: every image also as an LR copy with the same label (doubles the batch); "
    "split: a share --lr-prob of the batch replaced by LR versions (the thesis seed's)."
)
DEFAULT_LR_SIZES: tuple[int, ...] = (16,)


class CRBBatch(NamedTuple):
    """The mixed batch; unpacks as ``images, labels, is_lr, lr_size``.

    ``lr_size`` is the height each sample was degraded to, or the input height for HR samples.
    """

    images: torch.Tensor
    labels: torch.Tensor
    is_lr: torch.Tensor
    lr_size: torch.Tensor


def check_crb_options(sizes: Sequence[int], mode: str, lr_prob: float, height: int | None = None, method: str = "bicubic") -> tuple[int, ...]:
    """Validate CRB options (one-line ``LrfrError``s); returns the sizes as a sorted unique tuple.

    ``height`` (the input height) is optional so a command can validate before any image exists.
    """
    check_choice(mode, CRB_MODES, "unknown --crb-mode")
    if isinstance(lr_prob, bool) or not isinstance(lr_prob, (int, float)) or not 0.0 <= float(lr_prob) <= 1.0:
        raise LrfrError(f"--lr-prob {lr_prob!r}: must be a share between 0 and 1")
    check_choice(method, METHODS, "unknown down-sampling method")
    if isinstance(sizes, (str, bytes)) or not len(sizes):
        raise LrfrError(f"--lr-sizes {sizes!r}: give one or more sizes in pixels, e.g. 8,12,16")
    out = []
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise LrfrError(f"--lr-sizes: {s!r} is not a whole number of pixels")
        if s < 1:
            raise LrfrError(f"--lr-sizes: size {s} must be at least 1 pixel")
        if height is not None and s >= height:
            raise LrfrError(f"--lr-sizes: size {s}px must be below the input height {height}px")
        out.append(int(s))
    return tuple(sorted(set(out)))


def _cpu_generator(generator: torch.Generator | int) -> torch.Generator:
    seed = generator if isinstance(generator, int) else generator.initial_seed()
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) & ((1 << 63) - 1))
    return g


def cross_resolution_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    sizes: Sequence[int] = DEFAULT_LR_SIZES,
    mode: str = "copies",
    lr_prob: float = 0.5,
    *,
    generator: torch.Generator | int,
    method: str = "bicubic",
) -> CRBBatch:
    """Mix HR images (``B×C×H×W`` uint8 or [0, 1] float, any device) with LR versions (module doc).

    ``lr_prob`` is used by ``split`` only. The result stays on the images' device and dtype; HR
    rows are the input rows unchanged.
    """
    if images.ndim != 4:
        raise LrfrError(f"cross-resolution batches need B x C x H x W images, got shape {tuple(images.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise LrfrError(f"cross-resolution batches: {labels.shape[0]} labels for {images.shape[0]} images")
    b, height = images.shape[0], images.shape[-2]
    size_set = check_crb_options(sizes, mode, lr_prob, height=height, method=method)
    g = _cpu_generator(generator)
    device = images.device

    if mode == "copies":
        src = torch.arange(b)
    else:
        k = math.floor(float(lr_prob) * b + 0.5)
        src = torch.randperm(b, generator=g)[:k].sort().values
    choice = torch.randint(len(size_set), (src.numel(),), generator=g)
    lr_sizes = torch.tensor(size_set, dtype=torch.int64)[choice]

    lr_images = torch.empty((src.numel(), *images.shape[1:]), dtype=images.dtype, device=device)
    for s in size_set:
        rows = (lr_sizes == s).nonzero().flatten()
        if rows.numel():
            rows_dev = rows.to(device)
            lr_images[rows_dev] = degrade_batch(images[src[rows].to(device)], DegradeSpec(size=s, method=method))

    if mode == "copies":
        out_images = torch.cat([images, lr_images])
        out_labels = torch.cat([labels, labels])
        is_lr = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])
        size = torch.cat([torch.full((b,), height, dtype=torch.int64), lr_sizes])
    else:
        out_images = images.clone()
        src_dev = src.to(device)
        out_images[src_dev] = lr_images
        out_labels = labels.clone()
        is_lr = torch.zeros(b, dtype=torch.bool)
        is_lr[src] = True
        size = torch.full((b,), height, dtype=torch.int64)
        size[src] = lr_sizes
    return CRBBatch(out_images, out_labels, is_lr.to(device), size.to(device))


__all__ = [
    "CRB_MODES",
    "CRB_MODE_HELP",
    "DEFAULT_LR_SIZES",
    "CRBBatch",
    "check_crb_options",
    "cross_resolution_batch",
]
