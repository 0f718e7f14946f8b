"""SphereFace / A-Softmax (Liu et al., CVPR 2017): a multiplicative angular margin.

The target cosine ``cos θ`` becomes ``ψ(θ) = (−1)^k cos(mθ) − 2k`` for ``θ ∈ [kπ/m, (k+1)π/m]``,
k = 0..m−1: monotonically decreasing on [0, π] and ≤ cos θ for m ≥ 1, so the target is always
*harder* than plain softmax (the thesis seed's ``cos(0.35θ)`` is *easier*: a regression test
guards this). As in the paper, training starts from softmax and anneals towards ψ:
``target = (λ·cos θ + ψ(θ)) / (1 + λ)`` with ``λ = max(λ_min, λ_base·(1 + γ·step)^(−power))``.
Features are normalised per sample (NormFace-style, scale ``s``), never by the batch's norm.
"""

from __future__ import annotations

import math

import torch

from .margin import MarginHead, angle


def psi(theta: torch.Tensor, m: torch.Tensor | float) -> torch.Tensor:
    """``(−1)^k cos(mθ) − 2k`` with ``k = ⌊mθ/π⌋``; continuous in θ for any real m ≥ 1."""
    m = torch.as_tensor(m, dtype=theta.dtype, device=theta.device)
    k = torch.floor(m * theta / math.pi).clamp(min=0)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * torch.cos(m * theta) - 2.0 * k


class SphereFaceHead(MarginHead):
    name = "sphereface"

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m: float = 4.0,
        lambda_base: float = 1000.0,
        lambda_min: float = 5.0,
        gamma: float = 0.12,
        power: float = 1.0,
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s, m=m)
        self.lambda_base = lambda_base
        self.lambda_min = lambda_min
        self.gamma = gamma
        self.power = power
        # A buffer, so the annealing state is saved in and restored from checkpoints.
        self.register_buffer("lam", torch.tensor(float(lambda_base)))

    def step(self, step: int) -> None:
        lam = max(self.lambda_min, self.lambda_base * (1.0 + self.gamma * step) ** (-self.power))
        self.lam.fill_(lam)

    def target_logit(self, cos_t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        p = psi(angle(cos_t), m)
        lam = self.lam.to(cos_t.dtype)
        return (lam * cos_t + p) / (1.0 + lam)
