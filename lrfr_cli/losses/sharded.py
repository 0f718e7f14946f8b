"""A sharded margin classifier: model-parallel softmax for millions of identities (Partial FC style).

With plain DDP every rank holds the whole ``C×d`` class-weight matrix and all-reduces its gradient
every step: 2 M identities × 512-d is 4 GB of fp32 weights per rank and a 4 GB all-reduce per
step. Here rank ``r`` of ``W`` holds only a contiguous class range ``[lo_r, hi_r)`` (sizes differ
by at most one), and a step communicates embeddings, not weights:

1. **Where the sample lives** (its own rank), the wrapped head computes the sample's margin
   *terms* with its own hook ``margin_terms``: the plain margin ``m``, Approach1/2's per-sample
   margin (from ``is_lr``/``images``), AdaFace's ``m`` and ẑ (whose EMA update all-reduces the
   norm statistics over ranks, so it happens once per global batch and leaves μ, σ identical on
   every rank). Raw images never travel.
2. Embeddings (with the autograd-aware :func:`~lrfr_cli.engine.distributed.gather_rows`), labels
   and those terms are all-gathered.
3. **Where the class lives**, each rank computes ``s·cos θ`` of every gathered embedding against
   its classes and replaces the target column of the samples whose class it owns by the head's
   own hook ``target_from_terms`` of ``cos θ_y`` and the terms.
4. Cross-entropy over the whole class set from an all-reduced row max and an all-reduced sum of
   ``exp``; its backward is local (``softmax − one-hot``)/N, so the shard's weight gradient is
   exactly the unsharded head's rows, and no weight gradient is ever all-reduced (the weight must
   be kept out of DDP: :func:`mark_ddp_ignored`).

The all-gather's backward sums the embedding gradients from every shard (reduce-scatter) and
multiplies them by ``W``: DDP *averages* the backbone's gradient over ranks, and ``W × mean`` of
per-rank contributions is their sum, i.e. exactly the gradient of the one global loss (as
arcface_torch's Partial FC does). The loss every rank returns is that global loss (the mean over
all ``N = Σ B_r`` samples), so the loop's all-reduced mean of it is the same number.

**Negative class sampling** (``sample_rate < 1``, training mode only): each rank keeps
``max(1, int(rate·C_r))`` of its classes, always including every class that is a target in the
global batch, drawn from the step's generator (per-rank local sampling, as Partial FC does); the
softmax is over the sampled classes. ``sample_rate = 1`` is the exact full softmax.

**Checkpoints** hold the *full* matrix under the unsharded head's keys (``weight``, buffers):
``state_dict()`` is a collective (every rank must call it; rank 0 receives the gathered
matrix, other ranks get their own shard back), and ``load_state_dict`` takes a full matrix and
slices this rank's range, so a checkpoint written by W ranks loads on any number of ranks, into
an unsharded head, ``eval`` and ``finetune``. Optimiser state of the shard (momentum) goes the
same way through :func:`gather_optimizer_state` / :func:`shard_optimizer_state`.

Which heads: any head with the two-method hook ``margin_terms(embeddings, labels, margin,
**fields) -> {name: B tensor}`` / ``target_from_terms(cos_t, **terms) -> target cosine`` defined
where its ``forward`` is or below: every :class:`~lrfr_cli.losses.margin.MarginHead` that keeps
the base ``forward`` (which is those two hooks), i.e. all of lrfr's margin losses, adaptive ones
included. Softmax (a biased linear layer, no normalised weights) has no hooks and is refused.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..engine.distributed import gather_rows, row_counts
from ..errors import LrfrError

Terms = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- partition
def class_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous classes ``[lo, hi)``: sizes differ by at most one, larger first."""
    base, extra = divmod(num_classes, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _dist_on(group: Any = None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _rank_world(group: Any = None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


# ----------------------------------------------------------------------------- communication
class CommLog:
    """Bytes each collective of this module moves, for the benchmark (off unless ``enabled``).

    ``payload`` is the tensor size one rank hands the collective: for an all-gather its own
    part, for an all-reduce / reduce-scatter the whole buffer.
    """

    def __init__(self) -> None:
        self.enabled = False
        self.records: list[tuple[str, int]] = []

    def add(self, op: str, t: torch.Tensor) -> None:
        if self.enabled:
            self.records.append((op, t.numel() * t.element_size()))

    def clear(self) -> None:
        self.records = []


COMM = CommLog()


def _all_reduce(t: torch.Tensor, op: Any, group: Any, name: str) -> None:
    COMM.add(name, t)
    dist.all_reduce(t, op=op, group=group)


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over all ranks' samples when each rank holds some of the classes.

    ``logits`` is this rank's ``N×K`` block; ``rows``/``cols`` locate the targets it owns. The
    max and the sum of ``exp`` are all-reduced (the shift by the row max is for range only and
    carries no gradient); the backward needs no communication: ``(softmax − one-hot) / N``.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, group: Any, distributed: bool) -> torch.Tensor:
        n = logits.shape[0]
        with torch.no_grad():
            top = logits.max(dim=1).values
            if distributed:
                _all_reduce(top, dist.ReduceOp.MAX, group, "all_reduce row max")
            e = torch.exp(logits - top[:, None])
            total = e.sum(dim=1)
            if distributed:
                _all_reduce(total, dist.ReduceOp.SUM, group, "all_reduce sum exp")
            prob = e.div_(total[:, None])
            picked = logits.new_zeros(n, 2)  # (target logit − max, owner count) per sample
            picked[rows, 0] = logits[rows, cols] - top[rows]
            picked[rows, 1] = 1.0
            if distributed:
                _all_reduce(picked, dist.ReduceOp.SUM, group, "all_reduce target logit")
            if not bool((picked[:, 1] == 1).all()):
                raise LrfrError("sharded classifier: a label is outside 0..num_classes-1 (no rank owns its class); check the training list")
            loss = (total.log() - picked[:, 0]).mean()
        ctx.save_for_backward(prob, rows, cols)
        return loss

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        prob, rows, cols = ctx.saved_tensors
        grad = prob.clone()
        grad[rows, cols] -= 1.0
        grad.mul_(g / prob.shape[0])
        return grad, None, None, None, None


# ----------------------------------------------------------------------------- margin adapters
class MarginPlan:
    """How a head's margin splits into a per-sample part (computed where the sample lives) and a
    target part (computed where the class lives). Both call the head's own methods."""

    def __init__(self, terms: Callable[..., Terms], target: Callable[..., torch.Tensor]) -> None:
        self.terms = terms
        self.target = target


def _defined_in(cls: type, attr: str) -> type | None:
    """The class of ``cls``'s MRO whose body defines ``attr``."""
    return next((c for c in cls.__mro__ if attr in vars(c)), None)


def margin_plan(head: nn.Module) -> MarginPlan:
    """The two-stage margin of ``head`` (its ``margin_terms``/``target_from_terms`` hooks); a
    one-line error for heads that cannot be sharded.

    The hooks are trusted only when they are defined where ``forward`` is or below it: a head
    that overrides ``forward`` but inherits the hooks computes something the hooks do not.
    """
    name = getattr(head, "name", type(head).__name__)
    cls = type(head)
    forward_in = _defined_in(cls, "forward")
    hooks_in = [_defined_in(cls, hook) for hook in ("margin_terms", "target_from_terms")]
    if forward_in is not None and all(h is not None and issubclass(h, forward_in) for h in hooks_in):
        return MarginPlan(head.margin_terms, head.target_from_terms)
    raise LrfrError(
        f"loss {name} cannot use --classifier sharded: it is not a normalised margin head "
        "(or it overrides forward without the margin_terms/target_from_terms hook); use --classifier full"
    )


def check_shardable(head: nn.Module, sample_rate: float = 1.0) -> None:
    """One-line errors, before any work, for a head that cannot be sharded or a bad sample rate."""
    if not 0.0 < sample_rate <= 1.0:
        raise LrfrError(f"--sample-rate {sample_rate}: must be in (0, 1] (1 = every class in every step)")
    margin_plan(head)


def _sample_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.sha256(f"lrfr-classes:{int(seed)}:{int(step)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ----------------------------------------------------------------------------- the classifier
class ShardedClassifier(nn.Module):
    """A margin head whose class weights are split over the ranks (module doc).

    ``head`` is the wrapped margin head, built for ``num_classes`` (its weight is sliced to this
    rank's range and the full matrix released) or already for this rank's range only (what
    :func:`build_sharded` does, so the full matrix never exists on a rank). ``sample_rate`` in
    (0, 1] keeps that share of each rank's classes per training step (targets always kept).
    """

    def __init__(self, head: nn.Module, num_classes: int, *, sample_rate: float = 1.0, seed: int = 0, group: Any = None) -> None:
        super().__init__()
        check_shardable(head, sample_rate)
        self.plan = margin_plan(head)
        self.group = group
        self.rank, self.world_size = _rank_world(group)
        if num_classes < 2 * self.world_size:
            raise LrfrError(
                f"--classifier sharded: {num_classes} classes over {self.world_size} ranks leaves fewer than 2 per rank; use --classifier full"
            )
        self.num_classes = int(num_classes)
        self.embedding_size = int(head.weight.shape[1])
        self.lo, self.hi = class_range(num_classes, self.rank, self.world_size)
        rows = head.weight.shape[0]
        if rows == num_classes and rows != self.hi - self.lo:
            head.weight = nn.Parameter(head.weight.detach()[self.lo : self.hi].clone())
        elif rows != self.hi - self.lo:
            raise LrfrError(f"sharded classifier: the head has {rows} class weights; expected {num_classes} or this rank's {self.hi - self.lo}")
        self.head = head
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.needs: tuple[str, ...] = tuple(getattr(head, "needs", ()))
        self.name = getattr(head, "name", type(head).__name__)
        self.s = float(head.s)
        self._step = 0
        #: This rank's sampled class indices (local, sorted) of the last training step; None = all.
        self.last_index: torch.Tensor | None = None

    @property
    def weight(self) -> nn.Parameter:
        """This rank's ``(hi − lo) × d`` block of the class-weight matrix."""
        return self.head.weight

    @property
    def num_local(self) -> int:
        return self.hi - self.lo

    def extra_repr(self) -> str:
        return f"classes={self.lo}..{self.hi - 1} of {self.num_classes}, rank={self.rank}/{self.world_size}, sample_rate={self.sample_rate}"

    # ------------------------------------------------------------------ step / stats hooks
    def step(self, step: int) -> None:
        self._step = int(step)
        if hasattr(self.head, "step"):
            self.head.step(step)

    def stats(self) -> dict[str, torch.Tensor]:
        return dict(self.head.stats()) if hasattr(self.head, "stats") else {}

    # ------------------------------------------------------------------ the computation
    def _select(self, labels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """Sorted local class indices to keep this step (every owned target included), or None."""
        if self.sample_rate >= 1.0 or not self.training:
            return None
        keep = max(1, int(self.sample_rate * self.num_local))
        dev = self.weight.device
        owned = labels[(labels >= self.lo) & (labels < self.hi)] - self.lo
        positives = torch.unique(owned)
        if positives.numel() >= keep:
            return positives
        if generator is None:
            generator = torch.Generator(device=dev)
            generator.manual_seed(_sample_seed(self.seed, self._step, self.rank))
        score = torch.rand(self.num_local, generator=generator, device=dev)
        score[positives] = 2.0  # above any rand(): positives always win
        return torch.topk(score, keep, sorted=False).indices.sort().values

    def _gather(self, embeddings: torch.Tensor, labels: torch.Tensor, terms: Terms) -> tuple[torch.Tensor, torch.Tensor, Terms]:
        names = sorted(terms)
        packed = torch.cat([embeddings.float(), *(terms[k].detach().float().reshape(-1, 1) for k in names)], dim=1)
        if not _dist_on(self.group):
            gathered, all_labels = packed, labels
        else:
            sizes = row_counts(labels, group=self.group, log=COMM.add)
            all_labels = gather_rows(labels.long(), sizes, group=self.group, log=COMM.add, name="labels")
            # The backward scales by the world size: DDP's mean of the backbone gradient is then
            # the gradient of the one global loss (module doc).
            gathered = gather_rows(packed, sizes, group=self.group, grad_scale=float(self.world_size), log=COMM.add, name="embeddings", grad_name="embedding grads")
        d = self.embedding_size
        return gathered[:, :d], all_labels, {k: gathered[:, d + i].detach() for i, k in enumerate(names)}

    def _shard_logits(
        self, embeddings: torch.Tensor, labels: torch.Tensor, margin: Any, generator: torch.Generator | None, fields: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits N×K, gathered labels, rows, cols)``: this rank's block, targets it owns at (rows, cols)."""
        if embeddings.shape[0] != labels.shape[0]:
            raise LrfrError(f"sharded classifier: {embeddings.shape[0]} embeddings for {labels.shape[0]} labels")
        terms = self.plan.terms(embeddings, labels, margin, **{k: fields[k] for k in fields if k in self.needs})
        emb, all_labels, all_terms = self._gather(embeddings, labels, terms)
        index = self._select(all_labels, generator)
        self.last_index = index
        w = self.weight if index is None else self.weight.index_select(0, index)
        with torch.autocast(device_type=emb.device.type, enabled=False):
            cos = (F.normalize(emb, dim=1) @ F.normalize(w.float(), dim=1).t()).clamp(-1.0, 1.0)
            rows = torch.nonzero((all_labels >= self.lo) & (all_labels < self.hi)).reshape(-1)
            local = all_labels[rows] - self.lo
            cols = local if index is None else torch.searchsorted(index, local)
            target = self.plan.target(cos[rows, cols], **{k: v[rows] for k, v in all_terms.items()})
            logits = cos.index_put((rows, cols), target.to(cos.dtype)) * self.s
        return logits, all_labels, rows, cols

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, margin: Any = None, *, generator: torch.Generator | None = None, **fields: torch.Tensor
    ) -> torch.Tensor:
        """This rank's logits for the all-gathered batch: ``N×K`` (K = its sampled classes).
        In one process with ``sample_rate = 1`` that is exactly the wrapped head's ``B×C``."""
        return self._shard_logits(embeddings, labels, margin, generator, fields)[0]

    def loss(
        self, embeddings: torch.Tensor, labels: torch.Tensor, margin: Any = None, *, generator: torch.Generator | None = None, **fields: torch.Tensor
    ) -> torch.Tensor:
        """The global mean cross-entropy (the same value on every rank). ``generator`` draws the
        sampled classes (pass the step's, for exact resumes); without it one is seeded from
        (seed, step, rank)."""
        logits, _, rows, cols = self._shard_logits(embeddings, labels, margin, generator, fields)
        return _ShardedCrossEntropy.apply(logits, rows, cols, self.group, _dist_on(self.group))

    # ------------------------------------------------------------------ checkpoints
    def full_weight(self, dst: int = 0) -> torch.Tensor:
        """The ``C×d`` matrix on rank ``dst`` (a collective; other ranks get their shard back)."""
        return self.full_rows(self.weight, dst)

    def full_rows(self, block: torch.Tensor, dst: int = 0) -> torch.Tensor:
        """Any per-class ``(hi − lo)×…`` block (the weight, its momentum) as the full matrix on
        rank ``dst``: a collective; other ranks get their own block back."""
        w = block.detach()
        if not _dist_on(self.group):
            return w.clone()
        most = math.ceil(self.num_classes / self.world_size)
        pad = torch.cat([w, w.new_zeros(most - w.shape[0], *w.shape[1:])]) if w.shape[0] < most else w.contiguous()
        parts = [torch.empty_like(pad) for _ in range(self.world_size)] if self.rank == dst else None
        COMM.add("gather weight (checkpoint)", pad)
        dist.gather(pad, parts, dst=dst, group=self.group)
        if parts is None:
            return w.clone()
        ranges = [class_range(self.num_classes, r, self.world_size) for r in range(self.world_size)]
        return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, ranges)])

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:  # type: ignore[override]
        """The wrapped head's state with the FULL weight matrix (on rank 0; a collective)."""
        inner = self.head.state_dict(keep_vars=keep_vars)
        inner["weight"] = self.full_weight()
        out = destination if destination is not None else OrderedDict()
        for k, v in inner.items():
            out[prefix + k] = v
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        """Load a full-matrix state (from any number of ranks, or an unsharded head): slice ours."""
        state = dict(state_dict)
        w = state.get("weight")
        if w is None or w.dim() != 2:
            raise LrfrError("sharded classifier: the checkpoint's head has no 2-D 'weight' (not a margin head?)")
        if tuple(w.shape) != (self.num_classes, self.embedding_size):
            raise LrfrError(
                f"sharded classifier: the checkpoint's head is {w.shape[0]}×{w.shape[1]}, "
                f"this run needs {self.num_classes} classes × {self.embedding_size}"
            )
        state["weight"] = w[self.lo : self.hi]
        return self.head.load_state_dict(state, strict=strict, assign=assign)


#: Classes per initialisation block (65,536 × 512 fp32 = 128 MB at most, built one at a time).
INIT_BLOCK = 65536


def build_sharded(name: str, embedding_size: int, num_classes: int, *, sample_rate: float = 1.0, seed: int = 0, group: Any = None, **kwargs: Any) -> ShardedClassifier:
    """``build_head(name, ...)`` sharded, without ever allocating the full matrix on a rank.

    The initial matrix does not depend on the number of ranks: up to :data:`INIT_BLOCK` classes it
    is the full head's own draw from the global RNG (so one process, sharded or not, starts where
    ``--classifier full`` does); beyond, block ``k`` of ``INIT_BLOCK`` classes is the head's own
    initialisation under a seed derived from one draw of the global RNG and ``k``, and each rank
    builds only the blocks that overlap its range. The global RNG advances the same on every rank.
    """
    from . import build_head

    rank, world = _rank_world(group)
    if num_classes < 2 * world:
        raise LrfrError(f"--classifier sharded: {num_classes} classes over {world} ranks leaves fewer than 2 per rank; use --classifier full")
    if num_classes <= INIT_BLOCK:
        return ShardedClassifier(build_head(name, embedding_size, num_classes, **kwargs), num_classes, sample_rate=sample_rate, seed=seed, group=group)
    lo, hi = class_range(num_classes, rank, world)
    base = int(torch.randint(0, 2**62, (1,)))
    with torch.random.fork_rng(devices=[]):
        head = build_head(name, embedding_size, hi - lo, **kwargs)
        rows = []
        for k in range(lo // INIT_BLOCK, (hi - 1) // INIT_BLOCK + 1):
            c0, c1 = k * INIT_BLOCK, min((k + 1) * INIT_BLOCK, num_classes)
            torch.manual_seed(base + k)
            block = build_head(name, embedding_size, c1 - c0, **kwargs).weight.detach()
            rows.append(block[max(lo, c0) - c0 : min(hi, c1) - c0])
            del block
        with torch.no_grad():
            head.weight.copy_(torch.cat(rows))
    return ShardedClassifier(head, num_classes, sample_rate=sample_rate, seed=seed, group=group)


# ----------------------------------------------------------------------------- DDP / optimiser
def sharded_modules(root: nn.Module) -> list[tuple[str, ShardedClassifier]]:
    return [(n, m) for n, m in root.named_modules() if isinstance(m, ShardedClassifier)]


def mark_ddp_ignored(root: nn.Module) -> list[str]:
    """Keep sharded weights out of DDP (call before wrapping ``root``): DDP would broadcast rank 0's
    shard over the others at start and average different shards' gradients. Returns the names."""
    names = [f"{n}.head.weight" if n else "head.weight" for n, _ in sharded_modules(root)]
    if names:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(root, names)
    return names


def _param_ids(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """id(param) → its index in ``optimizer.state_dict()`` (params numbered in group order)."""
    out: dict[int, int] = {}
    for p in (p for g in optimizer.param_groups for p in g["params"]):
        out.setdefault(id(p), len(out))
    return out


def gather_optimizer_state(optimizer: torch.optim.Optimizer, shards: Iterable[ShardedClassifier]) -> dict[str, Any]:
    """``optimizer.state_dict()`` with each sharded weight's per-row state (SGD momentum, Adam
    moments) gathered to the full ``C×d`` on rank 0 (a collective), so it resumes on any number of ranks."""
    state = optimizer.state_dict()
    # state_dict() shares the per-parameter dicts with the live optimiser: copy before replacing.
    state["state"] = {k: dict(v) for k, v in state["state"].items()}
    ids = _param_ids(optimizer)
    for m in shards:
        idx = ids.get(id(m.weight))
        if idx is None:
            continue
        per = state["state"].get(idx, {})
        for key in sorted(per):
            v = per[key]
            if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(m.weight.shape):
                per[key] = m.full_rows(v)
    return state


def shard_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer, shards: Iterable[ShardedClassifier]) -> dict[str, Any]:
    """The inverse of :func:`gather_optimizer_state`: full-matrix per-row state sliced to each rank's range."""
    ids = _param_ids(optimizer)
    out = {**state, "state": {k: dict(v) for k, v in state["state"].items()}}
    for m in shards:
        idx = ids.get(id(m.weight))
        per = out["state"].get(idx) if idx is not None else None
        if not per:
            continue
        for key, v in per.items():
            if isinstance(v, torch.Tensor) and v.dim() == 2 and tuple(v.shape) == (m.num_classes, m.embedding_size):
                per[key] = v[m.lo : m.hi].clone()
    return out


def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float, shards: Iterable[ShardedClassifier]) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` of the *whole* model when class weights are sharded.

    Each rank sees only its shard's gradient, so a local norm differs between ranks and so would
    the clip factor (the backbone replicas would drift apart). Here the shards' squared norms are
    summed over ranks, the replicated parameters' (identical after DDP) counted once: every rank
    gets the unsharded model's norm and scales by the same ``max_norm / (norm + 1e-6)`` (≤ 1).
    """
    shards = list(shards)
    sharded = {id(m.weight) for m in shards}
    group = next((m.group for m in shards), None)
    with_grad = [p for p in params if p.grad is not None]
    grads = [p.grad for p in with_grad]
    own = [p.grad for p in with_grad if id(p) in sharded]
    rep = [p.grad for p in with_grad if id(p) not in sharded]
    dev = grads[0].device if grads else torch.device("cpu")
    rep_sq = sum(((g.detach().float() ** 2).sum() for g in rep), torch.zeros((), device=dev))
    own_sq = sum(((g.detach().float() ** 2).sum() for g in own), torch.zeros((), device=dev))
    if _dist_on(group):
        _all_reduce(own_sq, dist.ReduceOp.SUM, group, "all_reduce shard grad norm")
    total = torch.sqrt(rep_sq + own_sq)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.detach().mul_(coef.to(g.dtype))
    return total


class ShardedState:
    """The training loop's state hooks (:class:`~lrfr_cli.engine.tasks.StateHooks`) for a task
    whose checkpoint holds sharded classifiers: their weights stay out of DDP, a checkpoint gathers
    them and their optimiser state to rank 0 (so every rank takes part in a save), a resume
    slices each rank's range, and ``--clip-grad`` clips by the whole model's norm."""

    collective_save = True

    def __init__(self, shards: Iterable[ShardedClassifier]) -> None:
        self.shards = list(shards)

    def keep_out_of_ddp(self, root: nn.Module) -> None:
        mark_ddp_ignored(root)  # each rank's shard is its own: DDP must not broadcast or average it

    def gather_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return gather_optimizer_state(optimizer, self.shards)

    def shard_optimizer_state(self, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return shard_optimizer_state(state, optimizer, self.shards)

    def clip_grad_norm(self, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        return clip_grad_norm_(params, max_norm, self.shards)


def sharded_state(modules: Iterable[nn.Module]) -> ShardedState | None:
    """The state hooks of a task whose checkpoint ``modules`` hold sharded classifiers; ``None``
    when they hold none (the loop's replicated default applies)."""
    shards = [m for mod in modules for _, m in sharded_modules(mod)]
    return ShardedState(shards) if shards else None


__all__ = [
    "COMM",
    "INIT_BLOCK",
    "CommLog",
    "MarginPlan",
    "ShardedClassifier",
    "ShardedState",
    "build_sharded",
    "check_shardable",
    "class_range",
    "clip_grad_norm_",
    "gather_optimizer_state",
    "margin_plan",
    "mark_ddp_ignored",
    "shard_optimizer_state",
    "sharded_modules",
    "sharded_state",
]
