"""AdaFace (Kim, Jain, Liu, CVPR 2022): a margin that adapts to the feature norm.

The feature norm ``‖z‖`` of an un-normalised embedding tracks image quality (blurry or tiny faces
get small norms), so AdaFace moves the margin with the batch-normalised norm ẑ:

    ẑ      = clip(h · (‖z‖ − μ) / (σ + ε), −1, 1)        ‖z‖ detached and clipped to [0.001, 100]
    g_ang  = −m · ẑ
    g_add  =  m + m · ẑ
    target = s · [cos(clip(θ_y + g_ang, ε, π − ε)) − g_add]      non-target logits: s · cos θ_j

with m = 0.4, h = 0.333, s = 64, ε = 1e-3. The endpoints: ẑ = −1 (a low norm) is ArcFace
``cos(θ + m)``, ẑ = 0 is CosFace ``cos θ − m``, ẑ = +1 (a high norm) is ``cos(θ − m) − 2m``.
The paper's reading: for low-quality samples the angular margin de-emphasises hard (likely
unrecognisable) examples, for high-quality ones it emphasises them.

μ and σ are an exponential moving average of the batch's mean and (unbiased, ``torch.std``)
standard deviation of the detached, clipped norms: ``μ ← α·mean + (1 − α)·μ`` with
``α = t_alpha = 0.01``, started at μ = 20, σ = 100 as in the authors' code (a wide σ so early
steps behave like CosFace). The update happens *before* ẑ is computed, so a batch is normalised
with statistics that already include it (as the authors' code does). Differences from that code,
on purpose: under DDP the batch statistics are all-reduced across ranks first (every rank
then holds the same μ, σ, and the result equals one big batch); μ and σ are buffers, so they
are saved in checkpoints; in eval mode they are frozen (the authors' code keeps updating).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from ..errors import LrfrError
from .margin import MarginHead, angle

NORM_MIN, NORM_MAX = 0.001, 100.0


def batch_norm_stats(norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std of ``norms``, over all ranks when torch.distributed is initialised.

    Two passes (global mean first, then the global sum of squared deviations) rather than a sum of
    squares: norms ≈ 20 ± 1 would lose most of σ to cancellation in fp32 otherwise. The result is
    what ``torch.mean``/``torch.std`` give on the concatenation of every rank's norms.
    """
    x = norms.detach().float().reshape(-1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        acc = torch.stack([x.sum(), torch.tensor(float(x.numel()), device=x.device)])
        dist.all_reduce(acc)
        n = acc[1]
        mean = acc[0] / n
        ss = ((x - mean) ** 2).sum()
        dist.all_reduce(ss)
    else:
        n = torch.tensor(float(x.numel()), device=x.device)
        mean = x.mean()
        ss = ((x - mean) ** 2).sum()
    std = torch.sqrt(ss / (n - 1).clamp_min(1.0))
    return mean, std


class AdaFaceHead(MarginHead):
    """AdaFace margin head; ``μ`` (``norm_mean``) and ``σ`` (``norm_std``) are buffers."""

    name = "adaface"
    summary = "AdaFace: margin adapted by the batch-normalised feature norm (m=0.4, h=0.333, EMA of norm stats)"
    options: ClassVar[dict[str, tuple[type, Any, str]]] = {
        "m": (float, 0.4, "AdaFace margin m (ArcFace-like for low feature norms, cos(θ−m)−2m for high ones)"),
        "h": (float, 0.333, "AdaFace h: how far the normalised feature norm moves the margin (ẑ = clip(h·(‖z‖−μ)/σ, −1, 1))"),
        "t_alpha": (float, 0.01, "AdaFace EMA weight of each batch's norm mean/std (1 = batch statistics only)"),
    }
    needs: ClassVar[tuple[str, ...]] = ()
    crb = "off"  # cross-resolution batches only when asked (--crb)
    eps = 1e-3

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s, m=m)
        if not m >= 0:
            raise LrfrError(f"AdaFace margin m={m}: must be >= 0")
        if not h > 0:
            raise LrfrError(f"AdaFace h={h}: must be > 0")
        if not 0 < t_alpha <= 1:
            raise LrfrError(f"AdaFace t_alpha={t_alpha}: must be in (0, 1]")
        self.h = float(h)
        self.t_alpha = float(t_alpha)
        self.register_buffer("norm_mean", torch.tensor(20.0))
        self.register_buffer("norm_std", torch.tensor(100.0))
        self._last_scaler: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, h={self.h}, t_alpha={self.t_alpha}"

    @torch.no_grad()
    def update_stats(self, norms: torch.Tensor) -> None:
        """One EMA step from a batch's (detached, clipped) norms; all ranks stay in step."""
        mean, std = batch_norm_stats(norms)
        a = self.t_alpha
        self.norm_mean.mul_(1 - a).add_(a * mean.to(self.norm_mean))
        self.norm_std.mul_(1 - a).add_(a * std.to(self.norm_std))

    def norm_scaler(self, embeddings: torch.Tensor) -> torch.Tensor:
        """ẑ per sample (detached); updates μ, σ first when the head is in training mode."""
        with torch.no_grad(), torch.autocast(device_type=embeddings.device.type, enabled=False):
            norms = embeddings.detach().float().norm(dim=1).clamp(NORM_MIN, NORM_MAX)
            if self.training:
                self.update_stats(norms)
            z = self.h * (norms - self.norm_mean) / (self.norm_std + self.eps)
            return z.clamp(-1.0, 1.0)

    def adaptive_target(self, cos_t: torch.Tensor, m: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``cos(clip(θ − m·ẑ, ε, π − ε)) − (m + m·ẑ)``: the target cosine before scaling."""
        theta = angle(cos_t)
        theta_m = (theta - m * z).clamp(self.eps, math.pi - self.eps)
        return torch.cos(theta_m) - (m + m * z)

    def margin_terms(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor | float | None, **fields: torch.Tensor) -> dict[str, torch.Tensor]:
        """``m`` and ẑ per sample. ẑ's EMA step happens here, where the sample lives: under the
        sharded classifier it is all-reduced over ranks once per global batch."""
        z = self.norm_scaler(embeddings)
        self._last_scaler = z
        return {"m": self.margins(embeddings, labels, margin), "z": z}

    def target_from_terms(self, cos_t: torch.Tensor, m: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.adaptive_target(cos_t, m, z)

    def stats(self) -> dict[str, torch.Tensor]:
        """Named values for metrics.jsonl (0-d tensors; the caller decides when to sync)."""
        out = {"norm_mean": self.norm_mean.detach().clone(), "norm_std": self.norm_std.detach().clone()}
        if self._last_scaler is not None:
            out["norm_scaler_mean"] = self._last_scaler.mean()
        return out


__all__ = ["AdaFaceHead", "batch_norm_stats"]
