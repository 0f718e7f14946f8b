"""Writing a face-embedding network as ONNX: the graph, its names and its ``metadata_props``.

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

The counterpart of :mod:`lrfr_cli.models.onnx_import`, and as low: ``lrfr export`` (which adds the
parity check, :mod:`lrfr_cli.export`) and ``lrfr eval --backend onnxruntime`` (which exports a run
on the fly, :mod:`lrfr_cli.embed.onnx_model`) both write through it.
"""

from __future__ import annotations

import io
import warnings
from typing import Protocol

import torch
from torch import nn

from .. import __version__
from ..errors import LrfrError
from ..registry import check_choice

OPSET = 17
LAYOUTS = ("nchw", "nhwc")
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
FORMAT = "lrfr-embedding/1"


class Exportable(Protocol):
    """What an export reads of a loaded model (:class:`lrfr_cli.embed.loaded.LoadedModel` is one)."""

    module: nn.Module
    name: str
    backbone: str
    embedding_size: int
    sha1: str
    source: str
    input_size: int
    channel_order: str
    sha256: str | None


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


def metadata(loaded: Exportable, layout: str = "nchw") -> dict[str, str]:
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


def to_onnx_bytes(loaded: Exportable, opset: int = OPSET, layout: str = "nchw") -> bytes:
    """Trace the model on CPU in fp32 and return the ONNX bytes (metadata not yet added).

    The module is left in eval mode (the exporter would otherwise restore the train mode of the
    fresh wrapper onto it, and a later forward would use batch statistics)."""
    check_choice(layout, LAYOUTS, "--layout")
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


__all__ = ["FORMAT", "INPUT_NAME", "LAYOUTS", "OPSET", "OUTPUT_NAME", "Exportable", "metadata", "to_onnx_bytes", "with_metadata"]
