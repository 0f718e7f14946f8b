"""Device and mixed-precision selection: one place, so nothing else hard-codes ``cuda``."""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager as ContextManager

import torch

from ..errors import LrfrError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the local CUDA device (``LOCAL_RANK`` under torchrun) or CPU; else validate."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise LrfrError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
        if spec == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise LrfrError(f"--device {spec}: expected cuda:N with an integer N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise LrfrError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    raise LrfrError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


def resolve_precision(precision: str, device: torch.device) -> str:
    """Validate ``precision`` for ``device``; fp16 autocast on CPU is refused (slow, lossy)."""
    p = (precision or "fp32").lower()
    if p not in PRECISIONS:
        raise LrfrError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if p == "fp16" and device.type != "cuda":
        raise LrfrError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LrfrError("--precision bf16: this GPU does not support bfloat16; use fp16")
    return p


def autocast(device: torch.device, precision: str) -> ContextManager[None]:
    """Autocast context for the forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
