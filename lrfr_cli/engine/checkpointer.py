"""The training checkpoints of a run: ``checkpoints/last.pt`` (resume) and ``best.pt`` (the best
validation so far), and the resume that reads ``last.pt`` back.

A checkpoint holds every piece of state the loop does not recompute: the task's checkpoint
modules under their names, the optimiser (its state as the task's :class:`StateHooks` gather it:
a sharded classifier's momentum as the full matrix), the schedule's position, the scaler, where
training stands (``step``, ``epoch``, ``batch_in_epoch``, ``best``), the global RNG states and the
run's config. Saving is atomic (:func:`~lrfr_cli.engine.checkpoint.save_checkpoint`) and done by
rank 0; when the hooks say saving is a collective, every rank takes part in gathering.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LrfrError
from .checkpoint import load_checkpoint, save_checkpoint
from .optim import LRSchedule
from .seed import rng_state, set_rng_state
from .tasks import StateHooks

LAST = "last.pt"
BEST = "best.pt"


@dataclass
class RunState:
    """Where training stands: what a checkpoint records beside the weights and the optimiser."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: dict[str, Any] | None = None  # {"metric", <metric>: value, "step", "epoch"} of best.pt


def _unwrap_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() if v.is_floating_point() else v for k, v in module.state_dict().items()}


class Checkpointer:
    """Saves and restores a run's checkpoints in ``folder`` (rank 0 writes; ``main`` says which rank this is)."""

    def __init__(
        self,
        folder: Path,
        modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        scaler: torch.amp.GradScaler,
        hooks: StateHooks,
        *,
        config: dict[str, Any],
        main: bool,
    ) -> None:
        self.folder = Path(folder)
        self.modules, self.optimizer, self.schedule, self.scaler, self.hooks = modules, optimizer, schedule, scaler, hooks
        self.config, self.main = config, main
        # This command's hyper-parameters per group, re-applied over a restored optimiser.
        self._group_options = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]

    @property
    def last(self) -> Path:
        return self.folder / LAST

    def save(self, name: str, state: RunState, epoch: int | None = None, batch_in_epoch: int | None = None) -> None:
        """Write ``name`` (``LAST``/``BEST``) at ``state``; ``epoch``/``batch_in_epoch`` override
        where it says training stands (a best checkpoint taken at an epoch's end names that epoch)."""
        if not self.main and not self.hooks.collective_save:
            return
        ck: dict[str, Any] = {n: _unwrap_state(mod) for n, mod in self.modules.items()}
        opt_state = self.hooks.gather_optimizer_state(self.optimizer)
        if not self.main:
            return
        ck.update(
            optimizer=opt_state,
            scheduler=dict(self.schedule.state_dict(), step=state.step),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
            step=state.step,
            epoch=state.epoch if epoch is None else epoch,
            batch_in_epoch=state.batch_in_epoch if batch_in_epoch is None else batch_in_epoch,
            rng=rng_state(),
            config=self.config,
            best=state.best,
        )
        save_checkpoint(self.folder / name, ck)

    def restore(self) -> RunState:
        """Load ``last.pt`` into the modules, the optimiser, the scaler and the global RNGs; where
        training stood. One-line errors for a missing or foreign checkpoint and for a task whose
        parameter groups changed."""
        path = self.last
        if not path.is_file():
            raise LrfrError(f"--resume: no checkpoint at {path}; start the run without --resume")
        # Onto the CPU: the RNG states in it must stay CPU ByteTensors (set_rng_state refuses CUDA
        # ones); load_state_dict copies weights, and the optimiser casts its state, to each
        # parameter's device.
        ck = load_checkpoint(path, map_location="cpu")
        missing = [k for k in (*self.modules, "optimizer", "step") if k not in ck]
        if missing:
            raise LrfrError(f"{path}: not an lrfr training checkpoint (missing {', '.join(missing)})")
        for name, mod in self.modules.items():
            mod.load_state_dict(ck[name])
        groups = self.optimizer.param_groups
        n_saved = len(ck["optimizer"].get("param_groups", []))
        if n_saved != len(groups):
            raise LrfrError(
                f"{path}: its optimiser has {n_saved} parameter group(s), this task {len(groups)} "
                "(a frozen/unfrozen part changed); start the run over with --force"
            )
        self.optimizer.load_state_dict(self.hooks.shard_optimizer_state(ck["optimizer"], self.optimizer))
        # The state (momenta) continues; the hyper-parameters are this command's (--resume --force
        # with a new --weight-decay or --momentum takes effect), identical on a plain resume.
        for g, opts in zip(groups, self._group_options):
            g.update(opts)
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        if "rng" in ck:
            set_rng_state(ck["rng"])
        return RunState(int(ck["step"]), int(ck.get("epoch", 0)), int(ck.get("batch_in_epoch", 0)), ck.get("best"))


__all__ = ["BEST", "LAST", "Checkpointer", "RunState"]
