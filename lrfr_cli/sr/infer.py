"""Using a trained SR network: load a run, super-resolve uint8 faces, score them.

One function, :func:`super_resolve`, turns LR faces (up-sampled back to 112 px, uint8, as
``degrade_batch`` makes them) into SR faces (uint8): validation during training, ``lrfr eval
--sr`` and ``lrfr sr`` all go through it, so what the PSNR was measured on is what the
recogniser sees and what is written to disk (clamped to 0..255 and rounded).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.degrade import DegradeSpec, degrade_batch
from ..engine import load_checkpoint
from ..engine.validation import Validation
from ..errors import LrfrError
from ..models.sr import build_sr
from ..workspace import fingerprint_file
from .metrics import mean_finite, psnr, ssim

#: ``config.json["kind"]`` of an SR run; recognition runs have no ``kind`` (or ``"recognition"``).
SR_KIND = "sr"


@torch.no_grad()
def super_resolve(net: nn.Module, lr: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """uint8 ``B×3×H×W`` up-sampled LR faces → uint8 SR faces, on ``lr``'s device, in eval mode."""
    was_training = net.training
    net.eval()
    out = []
    try:
        for i in range(0, lr.shape[0], batch):
            x = lr[i : i + batch].float() / 255.0
            out.append(torch.round(net(x).float().clamp(0.0, 1.0) * 255.0).to(torch.uint8))
    finally:
        net.train(was_training)
    return torch.cat(out) if out else lr.clone()


def score_sizes(net: nn.Module | None, hr: torch.Tensor, sizes: Sequence[int], method: str = "bicubic") -> dict[str, float]:
    """PSNR/SSIM (Y channel, :mod:`.metrics`) of SR (``net``) or of bicubic (``net=None``) faces
    against ``hr`` at each size: ``{"psnr@16": .., "ssim@16": .., "psnr": mean over sizes, ...}``."""
    out: dict[str, float] = {}
    for s in sizes:
        lr = degrade_batch(hr, DegradeSpec(size=int(s), method=method))
        img = super_resolve(net, lr) if net is not None else lr
        out[f"psnr@{s}"] = mean_finite(psnr(img, hr))
        out[f"ssim@{s}"] = mean_finite(ssim(img, hr))
    out["psnr"] = sum(out[f"psnr@{s}"] for s in sizes) / len(sizes)
    out["ssim"] = sum(out[f"ssim@{s}"] for s in sizes) / len(sizes)
    return out


def sr_validation(hr: torch.Tensor, sizes: Sequence[int], device: torch.device, method: str = "bicubic") -> Validation:
    """The seam's validation of an SR run: ``val_psnr`` (mean over ``sizes``, higher is better)
    plus per-size PSNR/SSIM of the network and of bicubic on the held-out faces ``hr`` (uint8)."""
    cache: dict[str, Any] = {}

    def run(task: Any) -> dict[str, float]:
        if "hr" not in cache:
            cache["hr"] = hr.to(device)
            cache["bicubic"] = score_sizes(None, cache["hr"], sizes, method)
        res = {f"val_{k}": v for k, v in score_sizes(task.checkpoint_modules()["model"], cache["hr"], sizes, method).items()}
        res.update({f"val_bicubic_{k}": v for k, v in cache["bicubic"].items()})
        res["val_images"] = float(hr.shape[0])
        return res

    return Validation(run, metric="val_psnr", higher_is_better=True)


@dataclass
class LoadedSR:
    """A trained SR network and what identifies it in eval records and caches."""

    module: nn.Module
    name: str
    arch: str
    sizes: list[int]
    method: str
    checkpoint: Path
    sha1: str
    step: int | None = None
    validation: dict[str, float] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """What a cached variant's name gets: the checkpoint's content decides, not the run name."""
        return f"sr-{self.arch}-{self.sha1[:12]}"

    def describe(self) -> dict[str, Any]:
        return {"method": self.arch, "run": self.name, "checkpoint": str(self.checkpoint), "checkpoint_sha1": self.sha1,
                "trained_sizes": self.sizes, "degradation": self.method, "step": self.step, "validation": self.validation}

    def sizes_outside_training(self, sizes: Sequence[int], input_size: int = 112) -> list[int]:
        """Probe sizes (below the input size) the network was not trained on."""
        return [int(s) for s in sizes if int(s) < input_size and int(s) not in self.sizes]


def _find_run(spec: str, ws_root: Path) -> Path | None:
    for c in [Path(spec).expanduser()] + ([ws_root / spec, ws_root / "runs" / spec] if not Path(spec).is_absolute() else []):
        if c.is_dir():
            return c
    return None


def load_sr_run(spec: str, ws_root: Path, checkpoint: str = "auto", flag: str = "--sr") -> LoadedSR:
    """``runs/RUN`` of ``lrfr train --task sr``; a recognition run or a missing one is one line."""
    run_dir = _find_run(spec, ws_root)
    if run_dir is None:
        raise LrfrError(f"{flag} {spec}: no such run (looked in {ws_root / 'runs'}); train one with `lrfr train --task sr`")
    cfg_file = run_dir / "config.json"
    try:
        config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise LrfrError(f"{cfg_file}: not valid JSON ({e})") from None
    if config.get("kind") != SR_KIND:
        raise LrfrError(f"{flag} {spec}: runs/{run_dir.name} is a face-recognition run, not a super-resolution one "
                        "(train one with `lrfr train --task sr --arch srcnn`; pass recognisers as --model)")
    ck_dir = run_dir / "checkpoints"
    path = ck_dir / ("best.pt" if checkpoint == "best" or (checkpoint == "auto" and (ck_dir / "best.pt").is_file()) else "last.pt")
    if not path.is_file():
        raise LrfrError(f"{flag} {spec}: runs/{run_dir.name} has no checkpoint {path.name}; train it first")
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or "model" not in ck:
        raise LrfrError(f"{path}: not an lrfr run checkpoint (no 'model' entry)")
    net = build_sr(str(config.get("arch", "")))
    try:
        net.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise LrfrError(f"{path}: does not fit --arch {config.get('arch')} ({str(e).splitlines()[0]})") from None
    net.eval()
    step = int(ck["step"]) if "step" in ck else None
    return LoadedSR(module=net, name=run_dir.name, arch=str(config["arch"]), sizes=[int(s) for s in config.get("lr_sizes", [])],
                    method=str(config.get("degradation", "bicubic")), checkpoint=path, sha1=fingerprint_file(path)["sha1"],
                    step=step, validation=_validation_at(run_dir / "metrics.jsonl", step))


def _validation_at(metrics: Path, step: int | None) -> dict[str, float]:
    """The validation line logged at the checkpoint's step (PSNR/SSIM of SR and bicubic)."""
    if step is None or not metrics.is_file():
        return {}
    found: dict[str, float] = {}
    for line in metrics.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step") == step and "val_psnr" in rec:
            found = {k: v for k, v in rec.items() if k.startswith("val_")}
    return found


@dataclass(frozen=True)
class SRFront:
    """An SR network as eval's probe front end: a hashable ``tag`` (the cache key part) and a
    call uint8 → uint8 on the batch's device. Equality and hashing use the tag only."""

    tag: str
    net: nn.Module = field(compare=False, hash=False, repr=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.net.to(x.device)
        return super_resolve(self.net, x)


__all__ = ["SR_KIND", "LoadedSR", "SRFront", "load_sr_run", "score_sizes", "sr_validation", "super_resolve"]
