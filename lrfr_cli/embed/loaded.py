"""What a loaded model is: the network plus what identifies it in caches and eval JSON.

Its own module because every part of embed/ (the embedding and quality passes, the ONNX paths)
and the export take one, while only the loaders (:mod:`lrfr_cli.embed.model`,
:mod:`lrfr_cli.embed.onnx_model`) make them: a module that needs the type need not load models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..models import INPUT_SIZE


@dataclass
class LoadedModel:
    """A backbone ready for inference plus what identifies it in caches and eval JSON."""

    module: nn.Module
    name: str  # run name or checkpoint file stem
    backbone: str
    embedding_size: int
    checkpoint: Path
    sha1: str
    source: str  # "run" | "external"
    input_size: int = INPUT_SIZE
    channel_order: str = "rgb"
    config: dict[str, Any] = field(default_factory=dict)
    contract: dict[str, Any] | None = None  # an ONNX file's input contract (layout, order, mean/std)
    backend: str = "torch"  # "torch" | "onnxruntime"
    sha256: str | None = None  # of an ONNX file

    @property
    def cache_id(self) -> str:
        """Folder name under ``embeddings/``: the content hash decides, the name is for humans.

        An ONNX file's preprocessing and the backend are part of it: another mean/std gives other
        embeddings, and onnxruntime's differ from torch's in the last bits."""
        base = f"{_safe(self.name)}-{self.sha1[:12]}"
        if self.contract is None and self.backend == "torch":
            return base
        key = json.dumps({"contract": _contract_key(self.contract), "backend": self.backend}, sort_keys=True)
        return f"{base}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"

    def preprocessing(self) -> dict[str, Any]:
        """How a uint8 RGB face becomes the network's input, explicitly (for the eval record)."""
        if self.contract is not None:
            c = self.contract
            return {"layout": c["layout"].upper(), "channel_order": c["channel_order"], "pixel_mean": c["mean"],
                    "pixel_std": c["std"], "input": "(pixel - pixel_mean) / pixel_std, float32", "sources": c.get("sources", {})}
        return {"layout": "NCHW", "channel_order": self.channel_order, "pixel_mean": [127.5] * 3, "pixel_std": [127.5] * 3,
                "input": "(pixel / 255 - 0.5) / 0.5, float32", "sources": {"all": self.source}}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "backbone": self.backbone,
            "embedding_size": self.embedding_size,
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha1": self.sha1,
            "input_size": self.input_size,
            "channel_order": self.channel_order,
            "backend": self.backend,
            **({"sha256": self.sha256} if self.sha256 else {}),
            **({"input_contract": self.contract} if self.contract is not None else {}),
        }


def _contract_key(contract: dict[str, Any] | None) -> dict[str, Any] | None:
    """What of a contract changes embeddings (not where each field was read from)."""
    if contract is None:
        return None
    return {k: contract[k] for k in ("layout", "channel_order", "mean", "std", "size", "output_name") if k in contract}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


__all__ = ["LoadedModel"]
