"""Super-resolution training as a task on the training seam (:mod:`lrfr_cli.engine.tasks`).

Each step gets the raw uint8 HR faces on the device, makes their LR versions there with
``degrade_batch`` (each face at a size drawn from ``sizes`` by the step's seed, as
Cross-Resolution Batches do, so a resumed run rebuilds the same LR batch), runs the SR network on
the LR face up-sampled back to 112 px, and returns

    loss = content + w_p · perceptual + w_a · adversarial_G + discriminator

- ``content``: L1 (default) or MSE between the SR face and the HR face, in [0, 1] units;
- ``perceptual`` (``--perceptual runs/RUN``): ``1 − cos`` between a *frozen* recognition
  network's embeddings of the SR face and of the HR face. The SRGAN recipe uses VGG features for
  this; a face recogniser's embedding is the feature we actually want SR to keep (identity);
- adversarial (SRGAN): the generator's non-saturating term ``BCE(D(SR), real)`` and the
  discriminator's ``BCE(D(HR), real) + BCE(D(SR.detach()), fake)`` in one loss, so the loop's
  single backward/step updates both. The generator's term runs D with *detached* parameters
  (``torch.func.functional_call``), so it moves the generator only; the discriminator's term
  sees a detached SR face, so it moves D only. Both players are updated simultaneously from the
  same state (not alternately): one optimiser, one step, and DDP, AMP, checkpoints and resume
  work unchanged. The discriminator's learning rate is ``--lr`` times ``disc_lr_scale``.

Patches (``patch`` px, default 48; 0 = whole faces): the LR face is made from the whole HR face,
then the same random ``patch``×``patch`` window (one per face, drawn by the step's seed) is cut
from the LR input and the HR target, as SRCNN trained on 33-px sub-images. Both networks are fully
convolutional, so they still run on whole 112-px faces afterwards; a step costs ~(patch/112)² of
a whole-face step (9× less at 48 px). The perceptual loss needs whole faces (the recogniser sees
112-px faces only), so it requires ``patch=0``.

Named terms for ``metrics.jsonl``: ``content``, ``bicubic_content`` (the same loss of the
bicubic input: the level to beat), and ``perceptual`` / ``adv_g`` / ``adv_d`` when enabled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..data.crb import check_crb_options, cross_resolution_batch
from ..engine.optim import param_groups as decay_groups
from ..engine.seed import step_seed
from ..engine.tasks import Batch, StepContext, StepOutput, Task
from ..errors import LrfrError
from ..models import preprocess
from ..registry import Registry

#: The content losses (``--sr-loss``): ``(sr, hr) -> scalar`` on [0, 1] images.
SR_LOSSES: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("--sr-loss")
SR_LOSSES.register("l1", F.l1_loss, "mean absolute difference (the default)")
SR_LOSSES.register("mse", F.mse_loss, "mean squared difference")


def lr_inputs(images: torch.Tensor, sizes: Sequence[int], seed: int, method: str = "bicubic") -> torch.Tensor:
    """uint8 HR faces → their LR versions up-sampled back (uint8, same shape), each at a size
    drawn from ``sizes`` by ``seed`` (Cross-Resolution Batches' split mode with every row replaced)."""
    labels = torch.zeros(images.shape[0], dtype=torch.int64, device=images.device)
    return cross_resolution_batch(images, labels, sizes, "split", 1.0, generator=seed, method=method).images


def random_patches(a: torch.Tensor, b: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``size``-px window of ``a[i]`` and ``b[i]`` for every face ``i``; offsets drawn on
    the CPU from ``seed`` (so CPU and GPU runs, and a resumed run, cut the same windows)."""
    h, w = a.shape[-2:]
    if size > min(h, w):
        raise LrfrError(f"--sr-patch {size}: larger than the {h}x{w} faces")
    g = torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
    ys = torch.randint(h - size + 1, (a.shape[0],), generator=g).tolist()
    xs = torch.randint(w - size + 1, (a.shape[0],), generator=g).tolist()
    pa = torch.stack([a[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(ys, xs))])
    pb = torch.stack([b[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(ys, xs))])
    return pa, pb


class SRTask(Task):
    """An SR network (+ optional frozen recogniser and discriminator) trained on HR faces."""

    def __init__(
        self,
        net: nn.Module,
        sizes: Sequence[int],
        *,
        loss: str = "l1",
        method: str = "bicubic",
        perceptual: nn.Module | None = None,
        perceptual_weight: float = 0.0,
        discriminator: nn.Module | None = None,
        adversarial_weight: float = 0.0,
        disc_lr_scale: float = 1.0,
        patch: int = 48,
    ) -> None:
        super().__init__()
        self.content_loss = SR_LOSSES.get(loss)
        self.sizes = check_crb_options(list(sizes), "split", 1.0, method=method)
        self.net = net
        self.method = method
        self.perceptual_weight = float(perceptual_weight)
        self.adversarial_weight = float(adversarial_weight)
        self.disc_lr_scale = float(disc_lr_scale)
        self.perceptual = perceptual
        if perceptual is not None:
            perceptual.requires_grad_(False)
            perceptual.eval()
        self.disc = discriminator
        self.patch = int(patch)
        if self.patch and perceptual is not None and perceptual_weight > 0:
            raise LrfrError("--perceptual needs whole faces (the recogniser sees 112-px faces): add --sr-patch 0")

    def train(self, mode: bool = True) -> SRTask:
        super().train(mode)
        if self.perceptual is not None:
            self.perceptual.eval()  # frozen: its BatchNorm statistics stay as trained
        return self

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        hr = batch["images"]
        lr = lr_inputs(hr, self.sizes, step_seed(ctx.seed, ctx.step, ctx.rank), self.method)
        if self.patch and self.patch < hr.shape[-1]:
            lr, hr = random_patches(lr, hr, self.patch, step_seed(ctx.seed, ctx.step, ctx.rank) ^ 0x5EED)
        x = lr.float() / 255.0
        y = hr.float() / 255.0
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.net(x)
        content = self.content_loss(out.float(), y)
        terms: dict[str, torch.Tensor] = {"content": content.detach(), "bicubic_content": self.content_loss(x.float(), y).detach()}
        loss = content
        if self.perceptual is not None and self.perceptual_weight > 0:
            with torch.no_grad():
                e_hr = F.normalize(self._embed(ctx.prepare(hr)), dim=1)
            e_sr = F.normalize(self._embed(preprocess(out)), dim=1)
            perc = (1.0 - (e_sr * e_hr).sum(1)).mean()
            loss = loss + self.perceptual_weight * perc
            terms["perceptual"] = perc.detach()
        if self.disc is not None and self.adversarial_weight > 0:
            frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
            frozen.update(dict(self.disc.named_buffers()))
            g_logit = functional_call(self.disc, frozen, (out,))
            adv_g = F.binary_cross_entropy_with_logits(g_logit.float(), torch.ones_like(g_logit, dtype=torch.float32))
            d_real = self.disc(y)
            d_fake = self.disc(out.detach())
            adv_d = F.binary_cross_entropy_with_logits(d_real.float(), torch.ones_like(d_real, dtype=torch.float32)) + \
                F.binary_cross_entropy_with_logits(d_fake.float(), torch.zeros_like(d_fake, dtype=torch.float32))
            loss = loss + self.adversarial_weight * adv_g + adv_d
            terms["adv_g"] = adv_g.detach()
            terms["adv_d"] = adv_d.detach()
        return StepOutput(loss, terms)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        assert self.perceptual is not None
        e = self.perceptual(x)
        return (e[0] if isinstance(e, (tuple, list)) else e).float()

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"model": self.net}
        if self.disc is not None:
            mods["disc"] = self.disc
        return mods

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        groups = [{**g, "lr_scale": 1.0} for g in decay_groups([self.net], weight_decay) if g["params"]]
        if self.disc is not None:
            groups += [{**g, "lr_scale": self.disc_lr_scale} for g in decay_groups([self.disc], weight_decay) if g["params"]]
        return groups

    def embedding_model(self) -> nn.Module:  # pragma: no cover - SR runs are never pair-validated
        raise LrfrError("a super-resolution run has no embedding model")


__all__ = ["SR_LOSSES", "SRTask", "lr_inputs", "random_patches"]
