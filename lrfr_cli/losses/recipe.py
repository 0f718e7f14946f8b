"""What a loss needs, answered in one place: ``resolve_loss(...)`` → :class:`LossChoice`.

A command used to work this out itself, between ``losses/`` and ``data/``: parse ``--loss-opt``,
overlay ``--margin``/``--scale``/``--quality``, canonicalise the quality mode, read the head's CRB
policy, probe whether it can be sharded and build it plain or sharded. Here the command asks once
and gets a frozen answer: the options as given (``config.json``'s ``"head"``), the CRB policy
and its reason, the batch fields, and how to check and build the head. Everything it reads is
declared by the head class itself (``options``, ``needs``, ``crb``, the sharding hooks), so a
new loss is one file and one :data:`~lrfr_cli.losses.LOSSES` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..data.quality import check_quality_mode
from ..errors import LrfrError
from . import LOSSES, build_head
from .sharded import build_sharded, check_shardable

CLASSIFIERS = ("full", "sharded")
CRB_POLICIES = ("off", "default", "required")


def resolve_crb(requested: bool | None, policy: str, loss: str) -> bool:
    """Whether a run uses CRB: ``requested`` (``--crb/--no-crb``, None = not given) against the
    loss's ``policy`` (``off``: CRB only when asked; ``default``: on unless ``--no-crb``;
    ``required``: on, and ``--no-crb`` is an error)."""
    if policy not in CRB_POLICIES:
        raise ValueError(f"unknown CRB policy {policy!r}")
    if policy == "required":
        if requested is False:
            raise LrfrError(f"--loss {loss} needs cross-resolution batches (its margin depends on HR/LR); drop --no-crb")
        return True
    if requested is None:
        return policy == "default"
    return bool(requested)


def crb_reason(requested: bool | None, policy: str, loss: str) -> str:
    """Why a run has CRB on or off, in words for its ``config.json`` (a reader of a run should not
    have to know each loss's default to tell why its batches were mixed)."""
    if policy == "required":
        return f"required by {loss} (its margin depends on the HR/LR flag)"
    if requested is None:
        return f"default for {loss}"
    return "--crb" if requested else "--no-crb"


@dataclass(frozen=True)
class LossChoice:
    """A resolved ``--loss``: everything a command needs to know about it, and how to build it."""

    #: The canonical (registered) loss name.
    name: str
    #: Typed options as given (``--loss-opt`` and the ``--margin``/``--scale``/``--quality``
    #: overlay, canonical spellings): ``config.json``'s ``"head"``; defaults are not filled in,
    #: so earlier runs keep their identity.
    head_kw: dict[str, Any]
    #: The head's declared CRB policy: ``off``, ``default`` or ``required``.
    crb_policy: str
    #: Batch fields the head reads beyond embeddings and labels (e.g. ``("is_lr",)``).
    needs: tuple[str, ...]
    #: ``full`` (every rank holds every class) or ``sharded`` (:mod:`lrfr_cli.losses.sharded`).
    classifier: str
    #: Share of the classes in each step's softmax (sharded only; 1 = all).
    sample_rate: float

    def crb_enabled(self, flag: bool | None) -> bool:
        """Whether batches are mixed, given ``--crb/--no-crb`` (None: not given)."""
        return resolve_crb(flag, self.crb_policy, self.name)

    def crb_reason(self, flag: bool | None) -> str:
        return crb_reason(flag, self.crb_policy, self.name)

    def check(self, embedding_size: int, num_classes: int) -> None:
        """One-line errors for bad option values or an unshardable head, before any work: a
        probe head (2 classes when sharded: the full matrix may not fit on one rank)."""
        probe = build_head(self.name, embedding_size, 2 if self.classifier == "sharded" else num_classes, **self.head_kw)
        if self.classifier == "sharded":
            check_shardable(probe, self.sample_rate)

    def build(self, embedding_size: int, num_classes: int, *, seed: int = 0) -> nn.Module:
        """The head for ``num_classes``: plain, or a ``ShardedClassifier`` (``seed`` draws its
        sampled classes)."""
        if self.classifier == "sharded":
            return build_sharded(self.name, embedding_size, num_classes, sample_rate=self.sample_rate, seed=seed, **self.head_kw)
        return build_head(self.name, embedding_size, num_classes, **self.head_kw)


def resolve_loss(
    name: str,
    items: Sequence[str] | None = (),
    *,
    margin: float | None = None,
    scale: float | None = None,
    quality: str | None = None,
    classifier: str = "full",
    sample_rate: float = 1.0,
) -> LossChoice:
    """``--loss NAME --loss-opt KEY=VALUE ... [--margin M] [--scale S] [--quality Q]
    [--classifier C] [--sample-rate R]`` checked and resolved (one-line errors). ``items`` None
    (Typer's empty ``--loss-opt``) means none."""
    entry = LOSSES.entry(name)
    key = classifier.lower()
    if key not in CLASSIFIERS:
        raise LrfrError(f"unknown --classifier {key!r}; choose one of: {', '.join(CLASSIFIERS)}")
    if key == "full" and sample_rate != 1.0:
        raise LrfrError("--sample-rate needs --classifier sharded (the full classifier uses every class in every step)")
    head_kw = LOSSES.parse_options(entry.name, items or ())
    if quality is not None:
        try:
            quality = check_quality_mode(quality)
        except LrfrError as e:
            raise LrfrError(f"--quality: {e}") from None
    for opt, flag, value in (("s", "--scale", scale), ("m", "--margin", margin), ("quality", "--quality", quality)):
        if value is not None:
            if opt not in entry.options:
                raise LrfrError(f"{flag}: loss {entry.name} has no option {opt!r} (its options: {', '.join(entry.options) or 'none'})")
            head_kw.update(LOSSES.parse_options(entry.name, [f"{opt}={value}"]))
    factory = entry.obj
    canonical = getattr(factory, "canonical_options", None)
    return LossChoice(
        name=entry.name,
        head_kw=canonical(head_kw) if canonical else head_kw,
        crb_policy=getattr(factory, "crb", "off"),
        needs=tuple(getattr(factory, "needs", ())),
        classifier=key,
        sample_rate=float(sample_rate),
    )


__all__ = ["CLASSIFIERS", "CRB_POLICIES", "LossChoice", "crb_reason", "resolve_crb", "resolve_loss"]
