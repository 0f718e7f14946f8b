"""ONNX export of an embedding model (ours or an external insightface/AdaFace checkpoint).

The graph takes what insightface's ONNX models take, so existing deployment code works with it:
``float32 N×3×112×112``, values ``(pixel - 127.5) / 127.5``, channels in the order the network
was trained on (``metadata_props["channel_order"]``: rgb for ours and insightface, bgr for
AdaFace), and returns the raw embedding (L2-normalise, then compare by cosine); ``layout="nhwc"``
makes it take ``N×112×112×3`` instead (TF-style deployments). The batch axis is dynamic.
Everything a caller must do to an image before the graph is written into the model's
``metadata_props`` (``layout``, ``channel_order``, ``pixel_mean``, ``pixel_std``,
``embedding_size``: what :func:`lrfr_cli.models.onnx_import.read_contract` reads back, so
``lrfr eval --model exported.onnx`` needs no options), because a file that travels without its
README must still be usable.

An export is only written after onnxruntime reproduced PyTorch's L2-normalised embeddings on
real aligned faces within :data:`TOLERANCE`, at two batch sizes (the dynamic axis really works).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .embed import LoadedModel
from .errors import LrfrError
from .models.forward import forward as torch_forward

TOLERANCE = 1e-4
"""Max |onnxruntime - PyTorch| over L2-normalised embeddings (fp32 kernels differ in summation
order; unit-length 512-d vectors have components around 0.04, so 1e-4 is ~0.25 % of one)."""
OPSET = 17
LAYOUTS = ("nchw", "nhwc")
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
FORMAT = "lrfr-embedding/1"


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


class _Graph(nn.Module):
    """The exported function: normalised input → raw embedding (first output of tuple-returning nets)."""

    def __init__(self, module: nn.Module, layout: str = "nchw") -> None:
        super().__init__()
        self.module = module
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "nhwc":
            x = x.permute(0, 3, 1, 2)
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out


def metadata(loaded: LoadedModel, layout: str = "nchw") -> dict[str, str]:
    """The preprocessing contract and the model's identity, as ONNX ``metadata_props``."""
    s = loaded.input_size
    return {
        "format": FORMAT,
        "input_name": INPUT_NAME,
        "input_shape": f"N,3,{s},{s}" if layout == "nchw" else f"N,{s},{s},3",
        "input_layout": f"{layout.upper()}, float32",
        "layout": layout.upper(),
        "input_size": str(s),
        "input_range": "[-1, 1]: (pixel / 255 - 0.5) / 0.5, i.e. (pixel - 127.5) / 127.5",
        "input_mean": "127.5",
        "input_std": "127.5",
        "pixel_mean": "127.5",
        "pixel_std": "127.5",
        "channel_order": loaded.channel_order,
        "alignment": f"5-point similarity warp onto the ArcFace {s}x{s} template (lrfr align)",
        "output_name": OUTPUT_NAME,
        "output": f"raw {loaded.embedding_size}-d embedding; L2-normalise, then compare by cosine",
        "embedding_size": str(loaded.embedding_size),
        "backbone": loaded.backbone,
        "model_name": loaded.name,
        "source": loaded.source,
        "checkpoint_sha1": loaded.sha1,
        **({"parent_onnx_sha256": loaded.sha256} if loaded.sha256 else {}),
        "exporter": f"lrfr {__version__}, torch {torch.__version__}",
    }


def preprocess_numpy(faces: np.ndarray, channel_order: str, layout: str = "nchw") -> np.ndarray:
    """uint8 N×H×W×3 RGB → the graph's input, exactly as :data:`metadata` describes it."""
    x = faces.astype(np.float32)
    if channel_order == "bgr":
        x = x[..., ::-1]
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray((x / 255.0 - 0.5) / 0.5, dtype=np.float32)


def to_onnx_bytes(loaded: LoadedModel, opset: int = OPSET, layout: str = "nchw") -> bytes:
    """Trace the model on CPU in fp32 and return the ONNX bytes (metadata not yet added).

    The module is left in eval mode (the exporter would otherwise restore the train mode of the
    fresh wrapper onto it, and a later forward would use batch statistics)."""
    if layout not in LAYOUTS:
        raise LrfrError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if not isinstance(loaded.module, nn.Module) or getattr(loaded.module, "takes_uint8", False):
        raise LrfrError("internal: to_onnx_bytes needs a torch module")
    module = loaded.module.float().to("cpu").eval()
    s = loaded.input_size
    x = torch.zeros(2, 3, s, s) if layout == "nchw" else torch.zeros(2, s, s, 3)
    graph = _Graph(module, layout).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # TorchScript exporter: needs no onnxscript, and these CNNs have no control flow.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)  # e.g. "constant folding not applied" for an imported graph's Slice
        try:
            torch.onnx.export(graph, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True)
        except Exception as e:  # noqa: BLE001 - the exporter raises many types for an unsupported op
            raise LrfrError(f"ONNX export of {loaded.backbone} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        finally:
            module.eval()
    return buf.getvalue()


def with_metadata(onnx_bytes: bytes, props: dict[str, str]) -> bytes:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(v)
    model.doc_string = "lrfr face embedding: " + props.get("output", "")
    onnx.checker.check_model(model)
    return model.SerializeToString()


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
