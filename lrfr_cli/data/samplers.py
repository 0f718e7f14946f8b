"""Batch samplers the training loop can choose from (``lrfr train --sampler NAME``).

Every sampler yields lists of dataset *codes* ``2·index + flip`` (the dataset applies the flip),
is a pure function of ``(seed, epoch)`` and shards each global batch over DDP ranks by slicing
it, so the union over ranks is the single-process batch and a resumed run (``start`` batches
skipped) sees exactly the batches an uninterrupted one would.

* ``epoch`` — a random permutation per epoch (:class:`~lrfr_cli.data.datasets.EpochBatchSampler`);
* ``pk`` — P identities × K images per batch (:class:`PKBatchSampler`), the structure that
  batch-hard triplet/octuplet mining needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import LrfrError
from ..registry import Option, Registry
from .datasets import EpochBatchSampler


class BatchSampler(Protocol):
    def __iter__(self) -> Iterator[list[int]]: ...

    def __len__(self) -> int: ...


class PKBatchSampler:
    """Batches of ``P = global_batch / k`` distinct identities with ``k`` images each.

    Only identities with at least 2 images take part (one image gives no positive pair); one
    with fewer than ``k`` images repeats some (drawn with replacement), one with more gives a
    random ``k``. An epoch has as many batches as the ``epoch`` sampler would
    (``n_images // global_batch``), so ``--epochs`` means the same amount of work; within an
    epoch identities are visited in shuffled rounds, a batch never holds one twice. Each rank
    takes whole identities: ``global_batch / world_size`` must be a multiple of ``k``.
    """

    def __init__(
        self,
        labels: np.ndarray,
        global_batch: int,
        seed: int,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
        start: int = 0,
        k: int = 4,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if k < 1:
            raise LrfrError(f"--images-per-identity {k}: must be >= 1")
        if global_batch % world_size or (global_batch // world_size) % k:
            raise LrfrError(
                f"--sampler pk: --batch-size {global_batch} must split into {world_size} process(es) × whole identities of "
                f"--images-per-identity {k} (a multiple of {k * world_size})"
            )
        self.p = global_batch // k
        ids, counts = np.unique(labels, return_counts=True)
        self.ids = ids[counts >= 2]
        if len(self.ids) < self.p:
            raise LrfrError(
                f"--sampler pk: a batch needs {self.p} identities with >= 2 images, the data has {len(self.ids)}; "
                "lower --batch-size or raise --images-per-identity"
            )
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], self.ids)
        self.members = {int(i): order[b : b + c] for i, b, c in zip(self.ids, bounds, counts[counts >= 2])}
        self.n_batches = len(labels) // global_batch
        if self.n_batches < 1:
            raise LrfrError(f"the dataset has {len(labels)} images, fewer than --batch-size {global_batch}; lower --batch-size")
        self.global_batch, self.k, self.seed, self.epoch = global_batch, k, seed, epoch
        self.rank, self.world_size, self.flip, self.start = rank, world_size, flip, start

    def __len__(self) -> int:
        return self.n_batches - self.start

    def batches(self) -> np.ndarray:
        """All global batches of the epoch as an ``n_batches × global_batch`` array of codes."""
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch, 0x504B]))
        out = np.empty((self.n_batches, self.global_batch), dtype=np.int64)
        queue: list[int] = []
        for b in range(self.n_batches):
            if len(queue) < self.p:  # a new shuffled round; the remainder is dropped (no repeats in a batch)
                queue = rng.permutation(self.ids).tolist()
            chosen, queue = queue[: self.p], queue[self.p :]
            row = []
            for ident in chosen:
                m = self.members[int(ident)]
                row.append(rng.choice(m, size=self.k, replace=len(m) < self.k))
            idx = np.concatenate(row)
            flips = rng.integers(0, 2, len(idx)) if self.flip else np.zeros(len(idx), dtype=np.int64)
            out[b] = idx * 2 + flips
        return out

    def __iter__(self) -> Iterator[list[int]]:
        per = self.global_batch // self.world_size
        for g in self.batches()[self.start :]:
            yield g[self.rank * per : (self.rank + 1) * per].tolist()


@dataclass(frozen=True)
class SamplerKind:
    """A registered sampler: its ``--help`` line and how it is made for one epoch."""

    summary: str
    make: Callable[..., BatchSampler]


def _epoch(labels: np.ndarray, global_batch: int, seed: int, epoch: int, rank: int, world_size: int, flip: bool, start: int) -> BatchSampler:
    return EpochBatchSampler(len(labels), global_batch, seed, epoch, rank, world_size, flip, start=start)


def _pk(labels: np.ndarray, global_batch: int, seed: int, epoch: int, rank: int, world_size: int, flip: bool, start: int, k: int) -> BatchSampler:
    return PKBatchSampler(labels, global_batch, seed, epoch, rank, world_size, flip, start, k=int(k))


SAMPLERS: Registry[SamplerKind] = Registry("sampler")
SAMPLERS.register("epoch", SamplerKind("a shuffled pass over all images per epoch", _epoch))
SAMPLERS.register(
    "pk",
    SamplerKind("P identities × K images per batch (K = --images-per-identity), for pair/triplet mining", _pk),
    options={"k": Option(4, "images per identity (K)")},
)


def build_sampler(
    name: str,
    labels: np.ndarray,
    global_batch: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    flip: bool = True,
    start: int = 0,
    **opts: Any,
) -> BatchSampler:
    """The sampler ``name`` for one epoch (``opts``: ``k`` for ``pk``; unknown names and options
    are the registry's one-line errors)."""
    opts = SAMPLERS.check_options(name, opts)
    return SAMPLERS.get(name).make(labels, global_batch, seed, epoch, rank, world_size, flip, start, **opts)


def batches_per_epoch(name: str, labels: np.ndarray, global_batch: int, world_size: int = 1, **opts: Any) -> int:
    """How many global batches one epoch of ``name`` has (validates the options on the way)."""
    return len(build_sampler(name, labels, global_batch, seed=0, epoch=0, rank=0, world_size=world_size, **opts))


__all__ = ["SAMPLERS", "BatchSampler", "SamplerKind", "PKBatchSampler", "batches_per_epoch", "build_sampler"]
