"""``lrfr sr``'s work: super-resolved copies of an image tree, and a before/after contact sheet.

Every image is degraded exactly as eval degrades a probe (``degrade_batch`` at ``size``, bicubic
back to 112 px) and then super-resolved by :func:`.infer.super_resolve`, so a written file is what
``lrfr eval --sr`` feeds the recogniser. Outputs are written atomically and existing ones are
skipped, so an interrupted run resumes (as ``lrfr degrade`` does); unreadable images are
returned as failures, never raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ..data.degrade import DegradeSpec, degrade_batch
from ..data.faces import to_input_size
from ..data.images import ImageReadError, load_rgb, save_rgb
from ..data.tree import TreeResult, output_rel
from ..progress import ProgressFn, null_progress
from ..workspace import atomic_path
from .infer import super_resolve
from .metrics import psnr


def _load(path: Path) -> np.ndarray:
    return to_input_size(load_rgb(path))


def super_resolve_tree(src: Path, rels: Sequence[str], out_dir: Path, net: nn.Module, spec: DegradeSpec, *,
                       device: torch.device, batch: int = 32, progress: ProgressFn = null_progress) -> TreeResult:
    """Write ``out_dir/<rel>.png`` (SR of ``rel`` degraded by ``spec``) for every image not yet there."""
    res = TreeResult.for_sizes([spec.size])
    progress(0, total=len(rels))
    todo = []
    for rel in rels:
        if (out_dir / output_rel(rel, "png")).exists():
            res.existing[spec.size] += 1
            progress(1)
        else:
            todo.append(rel)
    net.to(device)
    for i in range(0, len(todo), batch):
        chunk, imgs = [], []
        for rel in todo[i : i + batch]:
            try:
                imgs.append(_load(src / rel))
                chunk.append(rel)
            except ImageReadError as e:
                res.failures.append((rel, str(e) or "unreadable"))
                progress(1)
        if not chunk:
            continue
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous().to(device)
        out = super_resolve(net, degrade_batch(x, spec)).permute(0, 2, 3, 1).cpu().numpy()
        for rel, img in zip(chunk, out):
            dst = out_dir / output_rel(rel, "png")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst, fsync=False) as tmp:
                save_rgb(tmp, img)
            res.written[spec.size] += 1
        progress(len(chunk))
    res.failures.sort()
    return res


def contact_sheet(src: Path, rels: Sequence[str], net: nn.Module, spec: DegradeSpec, path: Path, *, device: torch.device,
                  title: str = "") -> dict[str, float]:
    """A PNG a person can look at: one face per row, columns LR input (its pixels enlarged without
    smoothing), bicubic, SR, HR, with each row's PSNR (Y, dB) under bicubic and SR. Returns the
    mean PSNR of both columns over the rows."""
    hr = torch.from_numpy(np.stack([_load(src / r) for r in rels])).permute(0, 3, 1, 2).contiguous().to(device)
    small = degrade_batch(hr, DegradeSpec(spec.size, spec.method, spec.blur, spec.noise, spec.jpeg, upsample=False))
    bic = degrade_batch(hr, spec)
    sr = super_resolve(net.to(device), bic)
    h, w = hr.shape[-2:]
    nearest = torch.nn.functional.interpolate(small.float(), size=(h, w), mode="nearest").round().to(torch.uint8)
    p_bic, p_sr = psnr(bic, hr).tolist(), psnr(sr, hr).tolist()
    cols = [("LR input", nearest), ("bicubic", bic), ("SR", sr), ("HR", hr)]
    pad, head, foot = 4, 30 if title else 16, 14
    sheet = Image.new("RGB", (len(cols) * (w + pad) + pad, head + len(rels) * (h + foot + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 2), title, fill="black")
    for c, (label, imgs) in enumerate(cols):
        x0 = pad + c * (w + pad)
        draw.text((x0 + 2, head - 13), f"{label} ({spec.size} px)" if c == 0 else label, fill="black")
        for r in range(len(rels)):
            y0 = head + r * (h + foot + pad)
            sheet.paste(Image.fromarray(imgs[r].permute(1, 2, 0).cpu().numpy()), (x0, y0))
            note = {1: p_bic[r], 2: p_sr[r]}.get(c)
            if note is not None:
                draw.text((x0 + 2, y0 + h + 1), f"PSNR {note:.2f} dB", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return {"psnr_bicubic": float(np.mean(p_bic)), "psnr_sr": float(np.mean(p_sr)), "rows": float(len(rels))}


__all__ = ["contact_sheet", "super_resolve_tree"]
