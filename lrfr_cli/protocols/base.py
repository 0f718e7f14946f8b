"""What every protocol hands the eval command: the images to embed and how to score them.

A protocol never runs the network. It returns a :class:`Plan`: the image set, the
``{variant: paths}`` it needs, and a ``score`` function that turns cached embeddings into plain
numbers. That split is what lets one cached embedding pass serve every pair, gallery and size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..data.degrade import DegradeSpec
from ..embed import Embeddings, ImageSet, Variant


@dataclass
class Plan:
    dataset: str
    protocol: str  # human description, e.g. "LFW View 2 (pairs.txt), 10-fold"
    images: ImageSet
    requests: dict[Variant, list[str]]
    score: Callable[[Embeddings], dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


def variant_for(size: int | None, input_size: int, method: str, *, blur: float = 0.0, noise: float = 0.0,
                jpeg: int | None = None, seed: int = 0) -> Variant:
    """The HR variant for ``size >= input_size`` (or None) without extra degradations, else a degraded one."""
    if size is None or (size >= input_size and not (blur or noise or jpeg)):
        return Variant(None)
    return Variant(DegradeSpec(size=min(size, input_size), method=method, blur=blur, noise=noise, jpeg=jpeg), seed)

