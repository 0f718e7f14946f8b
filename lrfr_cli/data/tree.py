"""Mirrored trees: align, degrade and sr write one output per source image at the same place.

A source ``<src>/<rel>`` becomes ``<out>/<output_rel(rel, fmt)>`` in every output tree, so a
tree of identity folders stays one, a resumed run finds what it already wrote by name, and the
outputs of one photo in two trees (``aligned/NAME`` and ``degraded/NAME/16px``) line up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


def output_rel(rel: str, fmt: str, index: int | None = None) -> str:
    """Where the output of source ``rel`` goes: the same folders, the ``.fmt`` suffix, and
    ``_k`` after the stem for the k-th of several outputs of one source (align's --select all)."""
    p = Path(rel)
    stem = p.stem if index is None else f"{p.stem}_{index}"
    return (p.parent / f"{stem}.{fmt}").as_posix()


@dataclass
class TreeResult:
    """What a tree job did. Per output tree, keyed by its size in pixels: the files written now
    and those already there (kept by a resumed run); and the sources that could not be read,
    as sorted ``(rel, reason)`` pairs, which no output tree holds."""

    written: dict[int, int] = field(default_factory=dict)
    existing: dict[int, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def for_sizes(cls, sizes: Iterable[int]) -> TreeResult:
        sizes = list(sizes)
        return cls(written=dict.fromkeys(sizes, 0), existing=dict.fromkeys(sizes, 0))


__all__ = ["TreeResult", "output_rel"]
