"""Low-resolution degradation: the one function that ``degrade``, ``train`` and ``eval`` share.

Pipeline (every step explicit, because at 8 px the interpolation choice alone moves LFW
accuracy by several points):

1. optional Gaussian blur (``blur`` = sigma in source pixels), reflect padding;
2. down-sample so the image height becomes ``size`` (width keeps the aspect ratio) with
   ``method``: ``bicubic`` (Keys a=-0.5) and ``bilinear`` with anti-aliasing (a low-pass
   filter widened by the scale factor, the same filter PIL uses, so a down-sampled image does
   not alias), ``area`` (box average over the exact fractional pixel overlaps, i.e. OpenCV's
   ``INTER_AREA`` at every ratio, anti-aliased by construction), ``nearest`` (no filter,
   heavy aliasing: the harshest model of a cheap sensor);
3. rounding to 8-bit levels (a real low-resolution image is stored as uint8);
4. optional additive Gaussian noise (``noise`` = std in 0..255 units), deterministic per key;
5. optional JPEG re-encoding at ``jpeg`` quality;
6. optional up-sampling back to the source size with bicubic interpolation (Keys a=-0.75, the
   OpenCV ``INTER_CUBIC`` kernel; what a network with a fixed 112x112 input sees).

Checked in tests: the down-sampling equals PIL's ``BICUBIC`` resize within 2 grey levels, ``area``
equals OpenCV's ``INTER_AREA`` within 1 level at integer and fractional ratios (112 -> 8..24 px),
the up-sampling equals OpenCV's ``INTER_CUBIC`` within 2 levels.

Works on a batch tensor on any device (:func:`degrade_batch`) and on a single HxWx3 uint8 array
(:func:`degrade_array`); the latter simply calls the former, so file and tensor paths agree.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LrfrError
from ..registry import check_choice
from .filters import METHODS, UP_METHODS


@dataclass(frozen=True)
class DegradeSpec:
    """One degradation setting; ``size`` is the low-resolution height in pixels."""

    size: int
    method: str = "bicubic"
    blur: float = 0.0
    noise: float = 0.0
    jpeg: int | None = None
    upsample: bool = True
    up_method: str = "bicubic"

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise LrfrError(f"size {self.size}: must be a positive number of pixels")
        check_choice(self.method, METHODS, "unknown method")
        if self.blur < 0:
            raise LrfrError(f"--blur {self.blur}: sigma must be >= 0")
        if self.noise < 0:
            raise LrfrError(f"--noise {self.noise}: std must be >= 0")
        if self.jpeg is not None and not 1 <= self.jpeg <= 100:
            raise LrfrError(f"--jpeg {self.jpeg}: quality must be in 1..100")
        check_choice(self.up_method, UP_METHODS, "--up-method")

    @property
    def antialias(self) -> bool:
        return self.method in ("bicubic", "bilinear", "area")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["antialias"] = self.antialias
        if self.up_method == "bicubic":
            del d["up_method"]  # the default: manifests written before the option stay valid
        if self.method == "area":
            # Marks the exact fractional-overlap box (it replaced torch's adaptive pooling), so
            # `lrfr degrade --down-method area` outputs made before the change are redone, not reused.
            d["box"] = "exact-overlap"
        return d

    def describe(self) -> str:
        parts = [f"{self.size}px {self.method}{' +antialias' if self.method in ('bicubic', 'bilinear') else ''}"]
        if self.blur:
            parts.append(f"blur σ={self.blur:g}")
        if self.noise:
            parts.append(f"noise σ={self.noise:g}")
        if self.jpeg:
            parts.append(f"jpeg q={self.jpeg}")
        parts.append(f"up {self.up_method}" if self.upsample else "no upsample")
        return ", ".join(parts)


def parse_sizes(text: str) -> list[int]:
    """``"8,12,16"`` → ``[8, 12, 16]`` with a clear error for anything else."""
    sizes = []
    for part in str(text).split(","):
        part = part.strip().lower().removesuffix("px")
        if not part:
            continue
        try:
            v = int(part)
        except ValueError:
            raise LrfrError(f"--sizes {text!r}: {part!r} is not an integer") from None
        if v <= 0:
            raise LrfrError(f"--sizes {text!r}: size {v} must be > 0")
        sizes.append(v)
    if not sizes:
        raise LrfrError(f"--sizes {text!r}: no sizes given")
    return sorted(set(sizes))


def key_generator(seed: int, key: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, key): noise depends on the image path, not on the order."""
    digest = hashlib.sha1(f"{seed}\0{key}".encode("utf-8", "surrogateescape")).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad_h = min(radius, x.shape[2] - 1)
    pad_w = min(radius, x.shape[3] - 1)
    kx = k[radius - pad_w : radius + pad_w + 1]
    ky = k[radius - pad_h : radius + pad_h + 1]
    kx, ky = kx / kx.sum(), ky / ky.sum()
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect")
    x = F.conv2d(x, kx.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect")
    return F.conv2d(x, ky.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@functools.lru_cache(maxsize=256)
def _axis_matrix(n_in: int, n_out: int, mode: str) -> torch.Tensor:
    """The ``n_out x n_in`` matrix of one-axis resampling, read off F.interpolate on a basis.

    Every mode here is linear and separable, so resizing is ``Mh @ x @ Mw.T``: two small matmuls
    instead of torch's CPU bicubic kernel, which is several times slower than PIL at 250x250.
    Reading the matrix off ``F.interpolate`` itself keeps torch's exact filter and borders;
    ``area`` is the exception (:func:`_area_matrix`), because torch's is not the exact box.
    Cached per ``(n_in, n_out, mode)``: a batch of one size reuses the same two matrices.
    """
    # Resize the identity image along its height only (width n_in -> n_in is the identity for every
    # mode): the result is the matrix itself. (A width-1 basis trips a torch anti-aliasing bug.)
    basis = torch.eye(n_in, dtype=torch.float64)[None, None]
    size = (n_out, n_in)
    if mode in ("bicubic", "bilinear"):
        out = F.interpolate(basis, size=size, mode=mode, align_corners=False, antialias=n_out < n_in)
    elif mode == "pil-bicubic":  # torch's anti-aliasing kernel is PIL's (a=-0.5), also when enlarging
        out = F.interpolate(basis, size=size, mode="bicubic", align_corners=False, antialias=True)
    elif mode == "area":
        return _area_matrix(n_in, n_out)
    else:
        out = F.interpolate(basis, size=size, mode="nearest-exact")
    return out[0, 0].float().contiguous()


def _area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Exact box (fractional-overlap) resampling: OpenCV's ``INTER_AREA``, for any ratio.

    Output pixel ``i`` covers the input interval ``[i*s, (i+1)*s)`` with ``s = n_in / n_out``;
    input pixel ``j`` contributes the length of its overlap with that interval, divided by ``s``.
    torch's ``mode="area"`` (adaptive average pooling) instead averages whole pixels
    ``floor(i*s) .. ceil((i+1)*s)-1`` with equal weights, which is the exact box only when
    ``s`` is an integer: at 112 -> 12/20/24 px it misses OpenCV by up to ~20 grey levels.
    Counting in units of ``1 / n_out`` input pixels keeps every boundary an integer, so the
    weights are exact before the final division. When up-sampling (``s < 1``) the same rule
    mixes at most two neighbours, which is also what ``INTER_AREA`` does when enlarging.
    """
    i = np.arange(n_out, dtype=np.int64)[:, None]
    j = np.arange(n_in, dtype=np.int64)[None, :]
    # interval of output i: [i*n_in, (i+1)*n_in); of input j: [j*n_out, (j+1)*n_out)
    overlap = np.minimum((i + 1) * n_in, (j + 1) * n_out) - np.maximum(i * n_in, j * n_out)
    m = np.clip(overlap, 0, None).astype(np.float64) / n_in
    return torch.from_numpy(m).float().contiguous()


def _resize(x: torch.Tensor, hw: tuple[int, int], method: str) -> torch.Tensor:
    """Anti-aliased (except ``nearest``) down-sampling; up-sampling with plain bicubic."""
    h, w = x.shape[-2:]
    mh = _axis_matrix(h, hw[0], method).to(x.device)
    mw = _axis_matrix(w, hw[1], method).to(x.device)
    return torch.matmul(torch.matmul(mh, x), mw.t())


def _resize_pil(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """PIL's BICUBIC resize of an 8-bit image: the horizontal pass first, stored as 8 bit (rounded
    and clipped), then the vertical pass. The intermediate clipping is what makes PIL differ from
    one exact 2-D filter by up to ~12 grey levels at dark and bright edges (overshoot)."""
    h, w = x.shape[-2:]
    mh = _axis_matrix(h, hw[0], "pil-bicubic").to(x.device)
    mw = _axis_matrix(w, hw[1], "pil-bicubic").to(x.device)
    return torch.matmul(mh, _quantize(torch.matmul(x, mw.t())))


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0.0, 255.0))


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip with libjpeg through Pillow (a CPU step, as a camera's encoder is)."""
    import io

    from PIL import Image

    device = x.device
    u8 = x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for img in u8:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.array(im.convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(device=device, dtype=torch.float32)


def lr_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """Low-resolution (height, width): height ``size``, width by aspect ratio (>= 1)."""
    return size, max(1, int(round(w * size / h)))


def degrade_batch(x: torch.Tensor, spec: DegradeSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """Degrade a batch ``B x C x H x W``.

    ``x`` is uint8 (0..255) or floating point in [0, 1]; the result has the same dtype and
    device, and the source size when ``spec.upsample`` (else ``size`` high). ``generator``
    drives the noise (one per image for per-path determinism, or one per batch in training).
    """
    if x.ndim != 4:
        raise ValueError(f"degrade_batch expects B x C x H x W, got shape {tuple(x.shape)}")
    in_dtype = x.dtype
    h, w = x.shape[-2:]
    if spec.size > h:
        raise LrfrError(f"size {spec.size}px is larger than the source height {h}px")
    y = x.float() if in_dtype == torch.uint8 else x.float() * 255.0
    if spec.blur > 0:
        y = _gaussian_blur(y, spec.blur)
    lh, lw = lr_shape(h, w, spec.size)
    if (lh, lw) != (h, w):
        y = _resize(y, (lh, lw), spec.method)
    y = _quantize(y)
    if spec.noise > 0:
        n = torch.randn(y.shape, generator=generator, device=generator.device if generator is not None else y.device)
        y = _quantize(y + spec.noise * n.to(y.device))
    if spec.jpeg:
        y = _jpeg(y, spec.jpeg)
    if spec.upsample and (lh, lw) != (h, w):
        up = _resize_pil(y, (h, w)) if spec.up_method == "pil-bicubic" else _resize(y, (h, w), spec.up_method)
        y = _quantize(up)
    if in_dtype == torch.uint8:
        return y.to(torch.uint8)
    return (y / 255.0).to(in_dtype)


def degrade_array(img: np.ndarray, spec: DegradeSpec, seed: int = 0, key: str = "") -> np.ndarray:
    """Degrade one HxWx3 uint8 image; noise is a function of (``seed``, ``key``) only."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0)
    g = key_generator(seed, key) if spec.noise > 0 else None
    out = degrade_batch(t, spec, generator=g)
    return out[0].permute(1, 2, 0).contiguous().numpy()
