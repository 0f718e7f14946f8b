"""The down- and up-sampling filters' names and help, without torch, so that a command's
``--help`` and the light commands (``make-list``, ``report``, ``status``) need not load it."""

from __future__ import annotations

METHODS = ("bicubic", "bilinear", "area", "nearest")
# Up-sampling back to the input size. "bicubic" (the default) is OpenCV's INTER_CUBIC (Keys a=-0.75);
# the Deep Siamese seed enlarged with PIL's BICUBIC (a=-0.5), which differs by up to 17 grey levels.
UP_METHODS = ("bicubic", "pil-bicubic", "bilinear", "nearest")
UP_METHOD_HELP = (
    "bicubic: Keys a=-0.75 (OpenCV INTER_CUBIC, the default); pil-bicubic: Keys a=-0.5 (PIL BICUBIC, "
    "the Deep Siamese seed's); bilinear: OpenCV INTER_LINEAR = PIL BILINEAR; nearest: PIL NEAREST."
)
METHOD_HELP = (
    "bicubic: Keys cubic (a=-0.5) with anti-aliasing (PIL-equivalent); "
    "bilinear: triangle filter with anti-aliasing; area: box average (anti-aliased by construction); "
    "nearest: no filtering (aliased)."
)

__all__ = ["METHODS", "METHOD_HELP", "UP_METHODS", "UP_METHOD_HELP"]
