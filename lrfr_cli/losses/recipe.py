"""TEMPORARY (lead's stand-in until the losses helper's version merges): the LossChoice API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..data.crb import crb_reason, resolve_crb
from ..data.quality import check_quality_mode
from ..errors import LrfrError
from . import build_head, head_factory, head_options, heads, parse_loss_opts
from .sharded import build_sharded, check_shardable


@dataclass(frozen=True)
class LossChoice:
    name: str
    head_kw: dict[str, Any]
    crb_policy: str
    needs: tuple[str, ...]
    classifier: str
    sample_rate: float

    def crb_enabled(self, flag: bool | None) -> bool:
        return resolve_crb(flag, self.crb_policy, self.name)

    def crb_reason(self, flag: bool | None) -> str:
        return crb_reason(flag, self.crb_policy, self.name)

    def check(self, embedding_size: int, num_classes: int) -> None:
        probe = build_head(self.name, embedding_size, 2 if self.classifier == "sharded" else num_classes, **self.head_kw)
        if self.classifier == "sharded":
            check_shardable(probe, self.sample_rate)

    def build(self, embedding_size: int, num_classes: int, *, seed: int = 0) -> nn.Module:
        if self.classifier == "sharded":
            return build_sharded(self.name, embedding_size, num_classes, sample_rate=self.sample_rate, seed=seed, **self.head_kw)
        return build_head(self.name, embedding_size, num_classes, **self.head_kw)


def resolve_loss(name: str, items: Sequence[str] = (), *, margin: float | None = None, scale: float | None = None,
                 quality: str | None = None, classifier: str = "full", sample_rate: float = 1.0) -> LossChoice:
    loss = name.lower()
    if loss not in heads():
        raise LrfrError(f"unknown loss {name!r}; choose one of: {', '.join(heads())}")
    classifier = classifier.lower()
    if classifier not in ("full", "sharded"):
        raise LrfrError(f"unknown --classifier {classifier!r}; choose one of: full, sharded")
    if classifier == "full" and sample_rate != 1.0:
        raise LrfrError("--sample-rate needs --classifier sharded (the full classifier uses every class in every step)")
    head_kw: dict[str, Any] = parse_loss_opts(loss, list(items))
    if quality is not None:
        try:
            quality = check_quality_mode(quality)
        except LrfrError as e:
            raise LrfrError(f"--quality: {e}") from None
    for key, flag, value in (("s", "--scale", scale), ("m", "--margin", margin), ("quality", "--quality", quality)):
        if value is not None:
            if key not in head_options(loss):
                raise LrfrError(f"{flag}: loss {loss} has no option {key!r} (its options: {', '.join(head_options(loss)) or 'none'})")
            head_kw.update(parse_loss_opts(loss, [f"{key}={value}"]))
    if "quality" in head_kw:
        head_kw["quality"] = check_quality_mode(head_kw["quality"])
    factory = head_factory(loss)
    return LossChoice(loss, head_kw, getattr(factory, "crb", "off"), tuple(getattr(factory, "needs", ())), classifier, sample_rate)
