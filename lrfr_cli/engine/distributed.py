"""DDP set-up from torchrun's environment.

``torchrun --nproc-per-node N lrfr train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR; the
same command without torchrun runs as a single process. Multi-node works through torchrun's own
rendezvous; nothing here is home-made.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files (checkpoints, manifests, metrics)."""
        return self.rank == 0


def dist_info() -> DistInfo:
    """What torchrun says about this process (single process when not launched by it)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun: nccl for CUDA, gloo for CPU."""
    info = dist_info()
    if info.is_distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return info


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` (a decision: skip / resume / error text) on every rank; identity when
    not distributed. Every rank must call it; only rank 0's argument matters."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


#: Told the name and the tensor of each collective a gather makes (the sharded classifier's byte
#: count for its benchmark); ``None``: nobody counts.
CommHook = Callable[[str, torch.Tensor], None]


def _dist_on(group: Any = None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def row_counts(x: torch.Tensor, *, group: Any = None, log: CommHook | None = None, name: str = "batch sizes") -> list[int]:
    """``x.shape[0]`` of every rank, in rank order (``[x.shape[0]]`` in a single process)."""
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    return [int(v) for v in gather_rows(n, [1] * dist.get_world_size(group), group=group, log=log, name=name)] if _dist_on(group) else [x.shape[0]]


def _gather_plain(x: torch.Tensor, sizes: Sequence[int], group: Any, log: CommHook | None, name: str) -> torch.Tensor:
    """All-gather rows of unequal counts (padded to the largest): the concatenation in rank order."""
    most = max(sizes)
    xp = x if x.shape[0] == most else torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    xp = xp.contiguous()
    parts = [torch.empty_like(xp) for _ in sizes]
    if log:
        log(f"all_gather {name}", xp)
    dist.all_gather(parts, xp, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """All-gather whose backward sums the gradient over ranks and keeps this rank's rows, times
    ``grad_scale``: a reduce-scatter on nccl (half an all-reduce's bytes), an all-reduce on gloo
    (which has no reduce-scatter)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int], group: Any, grad_scale: float, log: CommHook | None, names: tuple[str, str]) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank, ctx.group, ctx.grad_scale, ctx.log, ctx.grad_name = sizes, dist.get_rank(group), group, grad_scale, log, names[1]
        return _gather_plain(x, sizes, group, log, names[0])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        sizes, rank, group, log = ctx.sizes, ctx.rank, ctx.group, ctx.log
        g = g.contiguous()
        if dist.get_backend(group) == "nccl":
            most = max(sizes)
            padded = g.new_zeros((len(sizes) * most, *g.shape[1:]))
            off = 0
            for r, n in enumerate(sizes):
                padded[r * most : r * most + n] = g[off : off + n]
                off += n
            out = g.new_empty((most, *g.shape[1:]))
            if log:
                log(f"reduce_scatter {ctx.grad_name}", padded)
            dist.reduce_scatter_tensor(out, padded, group=group)
            mine = out[: sizes[rank]]
        else:
            g = g.clone()  # the incoming gradient is autograd's: sum into a copy
            if log:
                log(f"all_reduce {ctx.grad_name}", g)
            dist.all_reduce(g, op=dist.ReduceOp.SUM, group=group)
            start = sum(sizes[:rank])
            mine = g[start : start + sizes[rank]]
        return (mine * ctx.grad_scale if ctx.grad_scale != 1.0 else mine), None, None, None, None, None


def gather_rows(
    x: torch.Tensor,
    sizes: Sequence[int] | None = None,
    *,
    group: Any = None,
    grad_scale: float = 1.0,
    log: CommHook | None = None,
    name: str = "rows",
    grad_name: str | None = None,
) -> torch.Tensor:
    """Every rank's rows of ``x`` concatenated in rank order (``x`` itself in a single process).

    ``sizes`` is each rank's row count (see :func:`row_counts`); ``None`` means all ranks have
    ``x.shape[0]``. A floating ``x`` is gathered differentiably: the backward sums the gradient
    of every rank's copy of the result and keeps this rank's rows, so a loss every rank computes
    on the gathered batch back-propagates as the sum over ranks. ``grad_scale`` multiplies that
    gradient (the world size when DDP's averaging of the backbone should give the gradient of one
    global loss, as in the sharded classifier). ``log`` is told ``"all_gather {name}"`` and
    ``"reduce_scatter|all_reduce {grad_name}"`` with the tensors handed to the collectives.
    """
    if not _dist_on(group):
        return x
    sizes = [int(n) for n in sizes] if sizes is not None else [x.shape[0]] * dist.get_world_size(group)
    if x.is_floating_point():
        return _GatherRows.apply(x, sizes, group, float(grad_scale), log, (name, grad_name or f"{name} grads"))
    return _gather_plain(x, sizes, group, log, name)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
