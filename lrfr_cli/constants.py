"""Numbers several layers must agree on, importable without torch or OpenCV.

The network input size is shared by the data layer (what datasets yield, what the packed cache
stores), the models (what backbones expect) and evaluation (what "HR" means). Defining it once
keeps a 112-px cache from silently feeding a model built for another size.
"""

from __future__ import annotations

INPUT_SIZE: int = 112
"""Side of the square, aligned face every backbone takes (the ArcFace template's 112×112)."""

__all__ = ["INPUT_SIZE"]
