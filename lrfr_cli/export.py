"""``lrfr export``: an embedding model (ours or an external insightface/AdaFace checkpoint) as a
verified ONNX file.

The graph and its metadata are written by :mod:`lrfr_cli.models.onnx_export` (the input contract
is described there). An export is only written after onnxruntime reproduced PyTorch's
L2-normalised embeddings on real aligned faces within :data:`TOLERANCE`, at two batch sizes (the
dynamic axis really works).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .embed import LoadedModel
from .errors import LrfrError
from .models.forward import forward as torch_forward
from .models.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, metadata, to_onnx_bytes, with_metadata

TOLERANCE = 1e-4
"""Max |onnxruntime - PyTorch| over L2-normalised embeddings (fp32 kernels differ in summation
order; unit-length 512-d vectors have components around 0.04, so 1e-4 is ~0.25 % of one)."""


class ExportMismatchError(LrfrError):
    """onnxruntime's embeddings differ from PyTorch's: the export is not written."""

    exit_code = 1


@dataclass
class Parity:
    faces: int
    batch_sizes: tuple[int, ...]
    max_abs: float
    min_cosine: float

    def as_dict(self) -> dict[str, Any]:
        return {"faces": self.faces, "batch_sizes": list(self.batch_sizes), "max_abs": self.max_abs,
                "min_cosine": self.min_cosine, "tolerance": TOLERANCE}


def preprocess_numpy(faces: np.ndarray, channel_order: str, layout: str = "nchw") -> np.ndarray:
    """uint8 N×H×W×3 RGB → the graph's input, exactly as :func:`~lrfr_cli.models.onnx_export.metadata` describes it."""
    x = faces.astype(np.float32)
    if channel_order == "bgr":
        x = x[..., ::-1]
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray((x / 255.0 - 0.5) / 0.5, dtype=np.float32)


def onnx_embeddings(onnx_bytes: bytes, faces: np.ndarray, channel_order: str, batch: int, layout: str = "nchw") -> np.ndarray:
    """L2-normalised embeddings from onnxruntime (CPU), ``batch`` faces per run."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    x = preprocess_numpy(faces, channel_order, layout)
    out = np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch]})[0] for i in range(0, len(x), batch)])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def torch_embeddings(loaded: LoadedModel, faces: np.ndarray) -> np.ndarray:
    """The reference: the forward ``lrfr eval`` uses (channel order, preprocessing), L2-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2)))
    e = torch_forward(loaded.module.float().cpu().eval(), x, "fp32", loaded.channel_order).double()
    return torch.nn.functional.normalize(e, dim=1).numpy()


def check_parity(loaded: LoadedModel, onnx_bytes: bytes, faces: np.ndarray, layout: str = "nchw") -> Parity:
    """Compare at two batch sizes: all faces in one run, and an odd size with a remainder."""
    if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != np.uint8:
        raise ValueError("faces must be uint8 N×H×W×3")
    ref = torch_embeddings(loaded, faces)
    batches = (len(faces), max(1, min(3, len(faces) - 1)))
    worst, min_cos = 0.0, 1.0
    for b in batches:
        got = onnx_embeddings(onnx_bytes, faces, loaded.channel_order, b, layout)
        worst = max(worst, float(np.abs(got - ref).max()))
        min_cos = min(min_cos, float((got * ref).sum(axis=1).min()))
    return Parity(len(faces), batches, worst, min_cos)


def load_faces(folder: Path, count: int, size: int) -> np.ndarray:
    """``count`` aligned faces spread over the sorted folder (different identities, not one)."""
    from .data.faces import load_face
    from .data.images import list_images

    if not folder.is_dir():
        raise LrfrError(f"no aligned faces to check the export on at {folder}; pass --check-images DIR (aligned {size}x{size} faces)")
    files = list_images(folder)
    if not files:
        raise LrfrError(f"{folder} holds no images to check the export on; pass --check-images DIR")
    idx = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int))
    return np.stack([load_face(files[i], size) for i in idx])


def export(loaded: LoadedModel, faces: np.ndarray | None, opset: int = OPSET, layout: str = "nchw") -> tuple[bytes, Parity | None]:
    """The verified ONNX bytes (with metadata, including the parity measured) or an error.

    ``faces=None`` skips the check (the metadata then says so)."""
    raw = to_onnx_bytes(loaded, opset, layout)
    props = metadata(loaded, layout)
    parity = None
    if faces is not None:
        parity = check_parity(loaded, raw, faces, layout)
        if not parity.max_abs <= TOLERANCE:
            raise ExportMismatchError(
                f"onnxruntime's embeddings differ from PyTorch's by {parity.max_abs:.2e} (> {TOLERANCE:g}) on {parity.faces} faces; "
                "nothing was written (re-run with --debug and report it)"
            )
        props["parity"] = f"onnxruntime vs PyTorch, {parity.faces} aligned faces, batch sizes {parity.batch_sizes}: max |diff| of L2-normalised embeddings {parity.max_abs:.2e}"
    else:
        props["parity"] = "not checked (--no-check)"
    return with_metadata(raw, props), parity
