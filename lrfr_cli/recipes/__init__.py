"""Training recipes: what ``lrfr train --task NAME`` and ``lrfr finetune`` turn their options
into. A recipe takes the command's parsed options, the workspace root, the device and the
precision, and returns the :class:`~lrfr_cli.engine.runner.TrainingRun` plus the parts of its
summary line; a new task is one module here plus one ``TASKS.register`` line.
"""

from __future__ import annotations

from ..registry import Registry
from .classify import classify_run
from .sr import sr_run

TASKS: Registry = Registry("--task")
TASKS.register("classify", classify_run, "a face-embedding backbone with a margin loss")
TASKS.register("sr", sr_run, "a face super-resolution network, scored by PSNR/SSIM")

__all__ = ["TASKS"]
