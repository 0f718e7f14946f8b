"""Image quality as the Laplacian response of a batch, computed on the device inside the step.

Approach2 sets each sample's margin from how sharp its input is. Sharpness is the response of the
3×3 Laplacian ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` on the grey image: it is large where fine
detail survives and collapses when an image was blurred or down-sampled and up-sampled back.

Exactly what is computed (so a number can be checked against OpenCV):

1. grey = ITU-R BT.601 luma of the RGB channels, as ``cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)``:
   for ``uint8`` input OpenCV's own 15-bit fixed-point formula
   ``(9798·R + 19235·G + 3735·B + 2^14) >> 15`` (so grey is an integer as OpenCV's is; checked
   equal to OpenCV on all 2^24 colours); for floating input (values in [0, 1]) the real-valued
   ``0.299·R + 0.587·G + 0.114·B`` on 0..255 units, without rounding;
2. the Laplacian above with reflect-101 borders (``F.pad(mode="reflect")``), i.e.
   ``cv2.Laplacian(grey, cv2.CV_64F)`` with its defaults (``ksize=1``, ``BORDER_REFLECT_101``);
3. per image: ``variance`` = population variance of the response (numpy's ``.var()``), or
   ``mean-abs`` = mean of its absolute value (the thesis seed's measure).

Units are grey levels (0..255) for both dtypes, so a threshold means the same for either. The
seed computed this per image in ``__getitem__`` with Python/NumPy; here it is one stencil over
the whole batch (four shifted adds), wherever the batch already is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import LrfrError

QUALITY_MODES = ("variance", "mean-abs")
QUALITY_HELP = (
    "variance: population variance of the Laplacian of the grey image (default); "
    "mean-abs: mean absolute Laplacian (the thesis seed's measure)."
)


def check_quality_mode(mode: str) -> str:
    """The canonical mode name, or a one-line error listing the choices."""
    key = str(mode).strip().lower().replace("_", "-")
    if key not in QUALITY_MODES:
        raise LrfrError(f"unknown quality mode {mode!r}: choose one of {', '.join(QUALITY_MODES)}")
    return key


def grey(images: torch.Tensor) -> torch.Tensor:
    """``N×3×H×W`` RGB → ``N×1×H×W`` float32 luma on 0..255 (OpenCV's RGB2GRAY; see module doc)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise LrfrError(f"quality needs an N x 3 x H x W RGB batch, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        # OpenCV's 15-bit fixed-point coefficients (they sum to 2^15); int32 holds 255·2^15 easily.
        x = images.to(torch.int32)
        g = (9798 * x[:, 0] + 19235 * x[:, 1] + 3735 * x[:, 2] + (1 << 14)) >> 15
        return g.unsqueeze(1).to(torch.float32)
    if not images.is_floating_point():
        raise LrfrError(f"quality needs uint8 or floating-point images, got {images.dtype}")
    x = images.to(torch.float32) * 255.0
    g = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return g.unsqueeze(1)


def laplacian(images: torch.Tensor) -> torch.Tensor:
    """``N×1×H×W`` Laplacian response of the grey image (``cv2.Laplacian(grey, CV_64F)``)."""
    g = grey(images)
    if min(g.shape[-2:]) < 2:
        raise LrfrError(f"quality needs images of at least 2x2 pixels, got {tuple(g.shape[-2:])}")
    # Four shifted copies rather than F.conv2d: exact in fp32 on every device (cuDNN may run a
    # convolution in TF32, whose 10-bit mantissa would swamp an 8-px face's response of ~±2).
    p = F.pad(g, (1, 1, 1, 1), mode="reflect")
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4.0 * g


def laplacian_quality(images: torch.Tensor, mode: str = "variance") -> torch.Tensor:
    """Per-image sharpness (length N, float32, same device); higher means sharper.

    Never differentiated: quality is a property of the input, used to set a margin.
    """
    mode = check_quality_mode(mode)
    with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
        lap = laplacian(images).flatten(1)
        if mode == "variance":
            return lap.var(dim=1, unbiased=False)
        return lap.abs().mean(dim=1)


__all__ = ["QUALITY_HELP", "QUALITY_MODES", "check_quality_mode", "grey", "laplacian", "laplacian_quality"]
