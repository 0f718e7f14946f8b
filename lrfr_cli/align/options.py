"""What an alignment run is asked to do: the options that change the pixels, and output names.

Kept apart from the aligner so the CLI can validate options and name outputs without importing
torch, and so the journal can compare the options of a resumed run with the ones it was made with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..data.tree import output_rel
from ..errors import LrfrError
from ..registry import check_choice
from .warp import template_for, template_with_margin

SELECTS = ("largest", "center", "all")
FALLBACKS = ("none", "center-crop")
FORMATS = ("jpg", "png")
# facenet-pytorch's defaults (P-, R-, O-net); repeated here so options need no torch import.
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)


@dataclass(frozen=True)
class AlignConfig:
    """Everything that changes the pixels written (the workspace key is made from it)."""

    size: int | tuple[int, int] = 112
    select: str = "largest"
    min_face: int = 30
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS
    min_prob: float = 0.95
    max_side: int = 800
    margin: float = 0.0
    fallback: str = "none"
    assume_cropped: bool = False
    fmt: str = "jpg"
    quality: int = 92

    def validate(self) -> AlignConfig:
        template_with_margin(self.size, self.margin)  # raises for a bad size or margin
        check_choice(self.select, SELECTS, "--select")
        check_choice(self.fallback, FALLBACKS, "--fallback")
        check_choice(self.fmt, FORMATS, "--format")
        if not 0.0 <= self.min_prob <= 1.0:
            raise LrfrError(f"--min-prob {self.min_prob}: expected a probability in [0, 1]")
        if self.min_face < 12:
            raise LrfrError(f"--min-face {self.min_face}: MTCNN cannot search for faces under 12 px (use >= 12)")
        if self.max_side and self.max_side < self.min_face:
            raise LrfrError(f"--max-side {self.max_side} is smaller than --min-face {self.min_face}")
        if not 1 <= self.quality <= 100:
            raise LrfrError(f"--quality {self.quality}: expected 1..100")
        return self

    @property
    def out_wh(self) -> tuple[int, int]:
        return template_for(self.size)[1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if isinstance(self.size, tuple) else self.size
        d["thresholds"] = list(self.thresholds)
        return d


def parse_size(text: str | int) -> int | tuple[int, int]:
    """``"112"`` → 112, ``"96x112"`` → (96, 112) (width x height)."""
    if isinstance(text, int):
        return text
    t = str(text).lower().replace(" ", "")
    try:
        if "x" in t:
            w, h = (int(v) for v in t.split("x", 1))
            size: int | tuple[int, int] = (w, h) if w != h else w
        else:
            size = int(t)
    except ValueError:
        raise LrfrError(f"--size {text!r}: expected 112, 128 or 96x112") from None
    template_for(size)
    return size


def parse_thresholds(text: str | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(text, str):
        try:
            vals = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise LrfrError(f"--thresholds {text!r}: expected three numbers such as 0.6,0.7,0.7") from None
    else:
        vals = tuple(float(v) for v in text)
    if len(vals) != 3 or not all(0.0 <= v <= 1.0 for v in vals):
        raise LrfrError(f"--thresholds {text!r}: expected three probabilities such as 0.6,0.7,0.7")
    return vals  # type: ignore[return-value]


def check_name_clashes(rels: Sequence[str], cfg: AlignConfig) -> None:
    """Refuse inputs whose faces would be written to the same file (``a.jpg`` and ``a.png``)."""
    seen: dict[str, str] = {}
    for r in rels:
        key = output_rel(r, cfg.fmt)
        if key in seen:
            raise LrfrError(f"{seen[key]} and {r} would both be written as {key}; rename one of them")
        seen[key] = r
