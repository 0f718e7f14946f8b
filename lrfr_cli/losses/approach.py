"""The thesis seed's low-resolution recipes as ArcFace heads with a per-sample margin.

Both are ArcFace, ``s·cos(θ_y + m_i)`` (with ArcFace's monotone fallback past ``θ > π − m``);
they differ only in where ``m_i`` comes from, so each needs one extra per-sample input, named in
the class attribute ``needs`` and passed as a keyword argument to ``forward``/``loss``.

Approach1 — margin by input resolution (needs ``is_lr``, a bool per sample, from Cross-Resolution
Batches)::

    m_i = m_lr if is_lr_i else m_hr                          (defaults m_hr = 0.35, m_lr = 0.5)

Approach2 — margin by input quality (needs ``images``, the raw batch the embeddings came from):
``q_i`` = Laplacian response of the image (:func:`lrfr_cli.data.quality.laplacian_quality`,
variance by default, ``mean-abs`` for the seed's measure), then::

    q̂_i = clip((ln q_i − ln q_lo) / (ln q_hi − ln q_lo), 0, 1)
    m_i = m_max − (m_max − m_min) · q̂_i                      (defaults 0.35 .. 0.5)

so a blurry/low-resolution input (small q) gets the large margin, a sharp one the small margin,
and ``m_i`` is bounded by construction. The seed's ``1 / mean|Laplacian|`` was unbounded (HR
margins came out near zero, as its report admits).

Why fixed reference points rather than a per-batch or EMA normalisation: a sample's margin then
depends on its own pixels only — not on its batch mates, the CRB share, the batch size or the
number of ranks — needs no state in checkpoints and no all-reduce, and means the same at step 1 as
at step 100k. The log scale is there because the Laplacian variance spans three decades between
an 8-px face and a sharp one. Defaults (for 112×112 aligned faces, bicubic down/up-sampling as in
``degrade_batch``), measured on 300 celeba_subset faces: ``q_lo`` ≈ the median quality of an
8-px-and-back face, ``q_hi`` ≈ the median of the sharp originals:

    =========  =======  =====  ======  ======  =====  ===========
    mode        8 px    16 px  24 px   56 px   q_lo   q_hi (HR)
    variance    2.4     5.4    13.7    118     2.5    800  (838)
    mean-abs    1.20    1.77   2.64    6.8     1.2    16   (16.8)
    =========  =======  =====  ======  ======  =====  ===========

With the variance defaults a 16-px face gets m ≈ 0.48, a 56-px one ≈ 0.40, a median HR face 0.35.
Other input sizes or data sets may want other ``q_lo``/``q_hi`` (options).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..data.quality import QUALITY_HELP, check_quality_mode, laplacian_quality
from ..errors import LrfrError
from .arcface import ArcFaceHead

QUALITY_REFERENCES: dict[str, tuple[float, float]] = {"variance": (2.5, 800.0), "mean-abs": (1.2, 16.0)}


def check_margin(name: str, value: float) -> float:
    v = float(value)
    if not 0.0 <= v < math.pi / 2:
        raise LrfrError(f"{name}={value}: an angular margin must be in [0, {math.pi / 2:.3f}) radians")
    return v


def check_margin_range(m_min: float, m_max: float) -> tuple[float, float]:
    """Validated ``(m_min, m_max)``; one-line errors for a reversed or out-of-range pair."""
    lo, hi = check_margin("m_min", m_min), check_margin("m_max", m_max)
    if lo > hi:
        raise LrfrError(f"margin range {m_min}..{m_max}: m_min must not exceed m_max")
    return lo, hi


def quality_margin(quality: torch.Tensor, m_min: float, m_max: float, q_lo: float, q_hi: float) -> torch.Tensor:
    """Per-sample margin from quality (formula in the module doc): bounded, non-increasing in q."""
    q_norm = (torch.log(quality.float().clamp_min(1e-12)) - math.log(q_lo)) / (math.log(q_hi) - math.log(q_lo))
    return m_max - (m_max - m_min) * q_norm.clamp(0.0, 1.0)


def _no_plain_margin(name: str, m: float | None, instead: str) -> None:
    if m is not None:
        raise LrfrError(f"--margin does not apply to {name}: its margins are {instead}")


class Approach1Head(ArcFaceHead):
    """ArcFace with ``m_lr`` for low-resolution samples and ``m_hr`` for the rest."""

    name = "approach1"
    summary = "Approach1: ArcFace with a per-sample margin by input resolution (HR 0.35, LR 0.5; needs CRB)"
    options: ClassVar[dict[str, tuple[type, Any, str]]] = {
        "m_hr": (float, 0.35, "Approach1 ArcFace margin for high-resolution samples"),
        "m_lr": (float, 0.5, "Approach1 ArcFace margin for low-resolution (CRB) samples"),
    }
    needs: ClassVar[tuple[str, ...]] = ("is_lr",)
    crb = "required"  # the HR/LR flag only exists with Cross-Resolution Batches

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: float | None = None, m_hr: float = 0.35, m_lr: float = 0.5
    ) -> None:
        _no_plain_margin(self.name, m, "--loss-opt m_hr=... (high resolution) and m_lr=... (low resolution)")
        self.m_hr, self.m_lr = check_margin("m_hr", m_hr), check_margin("m_lr", m_lr)
        super().__init__(embedding_size, num_classes, s=s, m=self.m_hr)
        self._last_margin: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, m_hr={self.m_hr}, m_lr={self.m_lr}"

    def sample_margins(self, is_lr: torch.Tensor) -> torch.Tensor:
        flag = torch.as_tensor(is_lr).reshape(-1).bool()
        hi = torch.full(flag.shape, self.m_lr, dtype=torch.float32, device=flag.device)
        return torch.where(flag, hi, torch.full_like(hi, self.m_hr))

    def margin_terms(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor | float | None, **fields: torch.Tensor) -> dict[str, torch.Tensor]:
        """``m_lr``/``m_hr`` by each sample's ``is_lr`` flag (unless ``margin`` is given)."""
        if margin is None:
            is_lr = fields.get("is_lr")
            if is_lr is None:
                raise ValueError("approach1 needs is_lr (one bool per sample, from cross-resolution batches)")
            if is_lr.numel() != embeddings.shape[0]:
                raise ValueError(f"approach1: {is_lr.numel()} is_lr flags for {embeddings.shape[0]} embeddings")
            margin = self.sample_margins(is_lr).to(embeddings.device)
            self._last_margin = margin.detach()
        return super().margin_terms(embeddings, labels, margin)

    def stats(self) -> dict[str, torch.Tensor]:
        """Named values for metrics.jsonl (0-d tensors; the caller decides when to sync)."""
        return {} if self._last_margin is None else {"margin_mean": self._last_margin.mean()}


class Approach2Head(ArcFaceHead):
    """ArcFace with a bounded margin from the input's Laplacian quality (module doc)."""

    name = "approach2"
    summary = "Approach2: ArcFace with a bounded per-sample margin from the input's Laplacian quality (0.35..0.5)"
    options: ClassVar[dict[str, tuple[type, Any, str]]] = {
        "m_min": (float, 0.35, "Approach2 margin for the sharpest inputs (quality >= q_hi)"),
        "m_max": (float, 0.5, "Approach2 margin for the blurriest inputs (quality <= q_lo)"),
        "quality": (str, "variance", "Approach2 image quality: " + QUALITY_HELP),
        "q_lo": (float, None, "Approach2 quality that gets m_max (default: an 8-px face; variance 2.5, mean-abs 1.2)"),
        "q_hi": (float, None, "Approach2 quality that gets m_min (default: a sharp 112-px face; variance 800, mean-abs 16)"),
    }
    needs: ClassVar[tuple[str, ...]] = ("images",)
    crb = "default"  # quality only varies enough to matter when the batch mixes resolutions

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m: float | None = None,
        m_min: float = 0.35,
        m_max: float = 0.5,
        quality: str = "variance",
        q_lo: float | None = None,
        q_hi: float | None = None,
    ) -> None:
        _no_plain_margin(self.name, m, "m_min..m_max (--loss-opt m_min=... --loss-opt m_max=...), set by image quality")
        self.m_min, self.m_max = check_margin_range(m_min, m_max)
        self.quality = check_quality_mode(quality)
        ref_lo, ref_hi = QUALITY_REFERENCES[self.quality]
        self.q_lo = float(ref_lo if q_lo is None else q_lo)
        self.q_hi = float(ref_hi if q_hi is None else q_hi)
        if not 0 < self.q_lo < self.q_hi:
            raise LrfrError(f"quality references q_lo={self.q_lo:g}, q_hi={self.q_hi:g}: need 0 < q_lo < q_hi")
        super().__init__(embedding_size, num_classes, s=s, m=self.m_max)
        self._last: dict[str, torch.Tensor] = {}

    @classmethod
    def canonical_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` with the quality mode in its one spelling (``MEAN_ABS`` → ``mean-abs``),
        so config.json and the run's identity do not depend on how it was typed."""
        if "quality" in options:
            options = {**options, "quality": check_quality_mode(options["quality"])}
        return options

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, "
            f"m={self.m_min}..{self.m_max}, quality={self.quality}, q_lo={self.q_lo:g}, q_hi={self.q_hi:g}"
        )

    def margin_from_quality(self, quality: torch.Tensor) -> torch.Tensor:
        return quality_margin(quality, self.m_min, self.m_max, self.q_lo, self.q_hi)

    def sample_margins(self, images: torch.Tensor) -> torch.Tensor:
        """Per-sample margin of a raw batch (uint8 or [0, 1] float, N×3×H×W), on its device."""
        q = laplacian_quality(images, self.quality)
        m = self.margin_from_quality(q)
        self._last = {"quality_mean": q.mean(), "margin_mean": m.mean()}
        return m

    def margin_terms(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor | float | None, **fields: torch.Tensor) -> dict[str, torch.Tensor]:
        """The margin from each sample's own image (unless ``margin`` is given): computed where
        the sample lives, so under the sharded classifier raw images never travel."""
        if margin is None:
            images = fields.get("images")
            if images is None:
                raise ValueError("approach2 needs images (the raw batch the embeddings were computed from)")
            if images.shape[0] != embeddings.shape[0]:
                raise ValueError(f"approach2: {images.shape[0]} images for {embeddings.shape[0]} embeddings")
            margin = self.sample_margins(images).to(embeddings.device)
        return super().margin_terms(embeddings, labels, margin)

    def stats(self) -> dict[str, torch.Tensor]:
        """Named values for metrics.jsonl (0-d tensors; the caller decides when to sync)."""
        return dict(self._last)


__all__ = [
    "QUALITY_REFERENCES",
    "Approach1Head",
    "Approach2Head",
    "check_margin",
    "check_margin_range",
    "quality_margin",
]
