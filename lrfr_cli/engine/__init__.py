"""Engine: device and precision, DDP through torchrun, seeding, checkpoints (and the train loop)."""

from .checkpoint import load_checkpoint, save_checkpoint
from .device import autocast, grad_scaler, resolve_device, resolve_precision
from .distributed import DistInfo, dist_info, init_distributed
from .seed import seed_everything

__all__ = [
    "DistInfo",
    "autocast",
    "dist_info",
    "grad_scaler",
    "init_distributed",
    "load_checkpoint",
    "resolve_device",
    "resolve_precision",
    "save_checkpoint",
    "seed_everything",
]
