"""The one embedding pass of an eval: load each needed image once, derive every requested
degradation from it on the device, run the model in batches, and keep the results in the cache.

Protocols ask for ``{Variant: [image paths]}``; pairs, galleries and probes are scored afterwards
from the cached rows, so an image that appears in 30 pairs is still embedded once per variant.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.degrade import DegradeSpec, degrade_batch, key_generator
from ..data.images import ImageReadError
from ..engine.signals import quiet_worker_init
from ..errors import LrfrError
from ..models.forward import forward as _forward_module
from ..models.forward import fuse
from ..progress import ProgressFn, null_progress
from .cache import EmbeddingCache
from .loaded import LoadedModel

FLUSH_SECONDS = 10.0
FLUSH_ENV = "LRFR_FLUSH_SECONDS"


def flush_seconds() -> float:
    """Seconds between cache flushes: an eval killed mid-way loses at most about this much work.

    Default :data:`FLUSH_SECONDS`; env ``LRFR_FLUSH_SECONDS`` overrides it (read at every call,
    so tests can make it 0 and flush after every batch).
    """
    text = os.environ.get(FLUSH_ENV, "").strip()
    if not text:
        return FLUSH_SECONDS
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0 or v == float("inf"):
        raise LrfrError(f"{FLUSH_ENV}={text!r}: expected a number of seconds >= 0 (e.g. 10)")
    return v


class ImageSet(Protocol):
    """A set of evaluation images addressed by relative path, delivered aligned.

    ``name`` names the cache folder; ``describe()`` is what the cache is keyed on (root,
    alignment); ``load(rel)`` returns an ``input_size``-square HxWx3 uint8 RGB face and must be
    picklable (it runs in DataLoader workers).
    """

    name: str

    def describe(self) -> dict[str, Any]: ...

    def load(self, rel: str) -> np.ndarray: ...


class SuperResolver(Protocol):
    """A super-resolution front end (``lrfr eval --sr``): uint8 up-sampled LR faces → uint8 faces
    on the same device; hashed and named by ``tag`` (its checkpoint's sha1), which goes into the
    variant's cache name. See :class:`lrfr_cli.sr.infer.SRFront`."""

    tag: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Variant:
    """How an image is presented: as loaded (``spec=None``) or degraded by ``spec``, then
    optionally super-resolved by ``sr`` (LR probes only; HR variants never carry one)."""

    spec: DegradeSpec | None = None
    seed: int = 0
    sr: SuperResolver | None = None

    @property
    def name(self) -> str:
        s = self.spec
        if s is None:
            return "hr"
        # "area" was a plain box only for integer ratios before it became the exact overlap box;
        # a new file name keeps caches made with the old filter from being reused silently.
        parts = [f"{s.size}px", "area-exact" if s.method == "area" else s.method]
        if s.blur:
            parts.append(f"blur{s.blur:g}")
        if s.noise:
            parts.append(f"noise{s.noise:g}-seed{self.seed}")
        if s.jpeg:
            parts.append(f"jpeg{s.jpeg}")
        if not s.upsample:
            parts.append("noup")
        elif s.up_method != "bicubic":
            parts.append(f"up-{s.up_method}")
        if self.sr is not None:
            parts.append(self.sr.tag)
        return "_".join(parts)

    def describe(self) -> str:
        text = "as aligned (no degradation)" if self.spec is None else self.spec.describe()
        return text + (f", super-resolved by {self.sr.tag}" if self.sr is not None else "")


@dataclass
class EmbedStats:
    computed: int = 0  # (image, variant) embeddings computed now
    cached: int = 0  # ... taken from the cache
    forward_images: int = 0  # images through the network (x2 with --flip)
    images_loaded: int = 0
    seconds: float = 0.0
    per_variant: dict[str, dict[str, int]] = field(default_factory=dict)


class _Faces(Dataset):
    def __init__(self, images: ImageSet, rels: list[str]):
        self.images = images
        self.rels = rels

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        try:
            img = self.images.load(self.rels[i])
        except ImageReadError as e:
            return i, torch.zeros(0, dtype=torch.uint8), str(e) or "unreadable"
        except LrfrError as e:
            return i, torch.zeros(0, dtype=torch.uint8), str(e)
        return i, torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), ""


def _collate(batch: list[tuple[int, torch.Tensor, str]]) -> tuple[list[int], list[torch.Tensor], list[str]]:
    return [b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch]


def forward(model: LoadedModel, x: torch.Tensor, precision: str) -> torch.Tensor:
    """uint8 B×3×H×W (RGB) → raw float32 embeddings, in the model's channel order.

    A thin adapter: the network runs in :func:`lrfr_cli.models.forward.forward`, the one
    forward that training validation uses too. An onnxruntime model
    (:class:`~lrfr_cli.embed.ort.OrtNet`) takes the uint8 faces itself, so its input is made from
    the pixels exactly as the file's contract says.
    """
    if getattr(model.module, "takes_uint8", False) and x.dtype == torch.uint8:
        return model.module.embed_uint8(x)
    return _forward_module(model.module, x, precision, model.channel_order)


class Embeddings:
    """L2-normalised embeddings looked up by (variant, paths)."""

    def __init__(self, cache: EmbeddingCache, flip: bool):
        self.cache = cache
        self.flip = flip
        # eval --sr: the protocol's LR variants are looked up as their super-resolved versions
        self.aliases: dict[Variant, Variant] = {}

    def get(self, variant: Variant, rels: list[str]) -> np.ndarray:
        variant = self.aliases.get(variant, variant)
        e = torch.from_numpy(self.cache.get(variant.name, rels).astype(np.float32))
        ef = torch.from_numpy(self.cache.get(variant.name + ".flip", rels).astype(np.float32)) if self.flip else None
        s = e if ef is None else e + ef
        if not bool(torch.isfinite(s).all()) or bool((s.norm(dim=1) == 0).any()):
            raise LrfrError("the model produced zero or non-finite embeddings (diverged or untrained checkpoint?)")
        return fuse(e, ef).numpy()

    def quality(self, variant: Variant, rels: list[str]) -> dict[str, np.ndarray]:
        """Per-face quality of the images as the network saw them (after degradation): the norm
        of the raw embedding (AdaFace's proxy: low for faces the model cannot place) and the
        Laplacian variance / mean |Laplacian| of the grey image (Approach2's sharpness)."""
        variant = self.aliases.get(variant, variant)
        lap = self.cache.get(variant.name + QUALITY, rels).astype(np.float64)
        norm = np.linalg.norm(self.cache.get(variant.name, rels).astype(np.float64), axis=1)
        return {"feature_norm": norm, "laplacian_variance": lap[:, 0], "laplacian_mean_abs": lap[:, 1]}

    def raw(self, variant: Variant, rels: list[str]) -> np.ndarray:
        """Un-normalised float64 embeddings (with ``flip``: plus the mirrored view's), for pooling
        that weighs each face by its feature norm (IJB templates) before normalising."""
        variant = self.aliases.get(variant, variant)
        e = self.cache.get(variant.name, rels).astype(np.float64)
        if self.flip:
            e = e + self.cache.get(variant.name + ".flip", rels).astype(np.float64)
        if not np.isfinite(e).all():
            raise LrfrError("the model produced non-finite embeddings (diverged or untrained checkpoint?)")
        return e


def pending(requests: dict[Variant, Iterable[str]], cache: EmbeddingCache, flip: bool = False) -> int:
    """How many images still need the network (0: everything is cached)."""
    todo: set[str] = set()
    for variant, rels in requests.items():
        rels = list(rels)
        for f in _files(variant, flip):
            todo.update(cache.missing(f, rels))
    return len(todo)


def embed(
    model: LoadedModel,
    images: ImageSet,
    requests: dict[Variant, Iterable[str]],
    cache: EmbeddingCache,
    *,
    flip: bool = False,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int = 64,
    workers: int = 0,
    progress: ProgressFn = null_progress,
    forward_fn: Callable[[LoadedModel, torch.Tensor, str], torch.Tensor] | None = None,
) -> tuple[Embeddings, EmbedStats]:
    """Make sure every requested (image, variant) is in the cache; compute only what is missing."""
    device = torch.device(device)
    fwd = forward_fn or forward
    t0 = time.time()
    stats = EmbedStats()
    todo: dict[Variant, set[str]] = {}
    for variant, rels in requests.items():
        rels = list(dict.fromkeys(rels))
        miss: set[str] = set()
        for f in _files(variant, flip):
            miss.update(cache.missing(f, rels))
        todo[variant] = miss
        stats.cached += len(rels) - len(miss)
        stats.computed += len(miss)
        stats.per_variant[variant.name] = {"images": len(rels), "computed": len(miss), "cached": len(rels) - len(miss)}
    order = list(dict.fromkeys(r for v in requests for r in requests[v] if r in todo[v]))
    if not order:
        stats.seconds = time.time() - t0
        return Embeddings(cache, flip), stats

    model.module.to(device)
    if device.type == "cuda":
        model.module.to(memory_format=torch.channels_last)
    loader = DataLoader(
        _Faces(images, order),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        worker_init_fn=quiet_worker_init if workers > 0 else None,  # die with the parent, silently
    )
    progress(0, total=len(order))
    every = flush_seconds()
    last_flush = time.time()
    try:
        for idx, tensors, errors in loader:
            bad = [(order[i], e) for i, e in zip(idx, errors) if e]
            if bad:
                rel, why = bad[0]
                raise LrfrError(f"cannot read {rel} under {images.describe().get('root', '?')}: {why}")
            rels = [order[i] for i in idx]
            x = torch.stack(tensors).to(device, non_blocking=True)
            stats.images_loaded += len(rels)
            for variant, miss in todo.items():
                sel = [j for j, r in enumerate(rels) if r in miss]
                if not sel:
                    continue
                xv = x[sel] if len(sel) != len(rels) else x
                xv = _apply(variant, xv, [rels[j] for j in sel])
                if device.type == "cuda":
                    xv = xv.contiguous(memory_format=torch.channels_last)
                sel_rels = [rels[j] for j in sel]
                cache.add(variant.name, sel_rels, fwd(model, xv, precision).cpu().numpy())
                cache.add(variant.name + QUALITY, sel_rels, _laplacians(xv))
                stats.forward_images += len(sel)
                if flip:
                    cache.add(variant.name + ".flip", sel_rels, fwd(model, xv.flip(3), precision).cpu().numpy())
                    stats.forward_images += len(sel)
            progress(len(rels))
            if time.time() - last_flush >= every:
                cache.flush()
                last_flush = time.time()
    finally:
        cache.flush()  # keep finished work, also when interrupted
    stats.seconds = time.time() - t0
    return Embeddings(cache, flip), stats


QUALITY = ".quality"  # cache file suffix: per face, the Laplacian variance and mean |Laplacian| of what the network saw


def _files(variant: Variant, flip: bool) -> list[str]:
    return [variant.name, variant.name + QUALITY] + ([variant.name + ".flip"] if flip else [])


def _laplacians(x: torch.Tensor) -> np.ndarray:
    from ..data.quality import laplacian_quality

    return torch.stack([laplacian_quality(x, "variance"), laplacian_quality(x, "mean-abs")], 1).cpu().numpy()


def _apply(variant: Variant, x: torch.Tensor, rels: list[str]) -> torch.Tensor:
    x = _degrade(variant, x, rels)
    return variant.sr(x) if variant.sr is not None else x


def with_sr(requests: dict[Variant, list[str]], sr: SuperResolver) -> tuple[dict[Variant, list[str]], dict[Variant, Variant]]:
    """``requests`` with every degraded variant super-resolved by ``sr`` (HR variants unchanged,
    so their cached embeddings are reused), and the map from the old variants to the new ones
    (for :attr:`Embeddings.aliases`, so a protocol's ``score`` needs no change)."""
    aliases = {v: Variant(v.spec, v.seed, sr) for v in requests if v.spec is not None}
    return {aliases.get(v, v): rels for v, rels in requests.items()}, aliases


def _degrade(variant: Variant, x: torch.Tensor, rels: list[str]) -> torch.Tensor:
    spec = variant.spec
    if spec is None or spec.size >= x.shape[-2] and not (spec.blur or spec.noise or spec.jpeg):
        return x
    if spec.noise > 0:
        # Noise is a function of (seed, image path) only: drawn from a CPU generator whatever the
        # batch's device (degrade_batch moves it), so it is identical to `lrfr degrade` of the
        # same file and the same on GPU and CPU evals, which share one cache key.
        return torch.cat([degrade_batch(x[i : i + 1], spec, key_generator(variant.seed, r)) for i, r in enumerate(rels)])
    return degrade_batch(x, spec)
