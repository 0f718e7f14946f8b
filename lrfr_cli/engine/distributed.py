"""DDP set-up from torchrun's environment.

``torchrun --nproc-per-node N lrfr train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR; the
same command without torchrun runs as a single process. Multi-node works through torchrun's own
rendezvous; nothing here is home-made.
"""

from __future__ import annotations

import os
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


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
