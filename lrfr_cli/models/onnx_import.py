"""ONNX face models: validate a file, read its input contract, and make it a trainable torch module.

**Converter.** The graph is translated by onnx2torch (the shared MobileFace, lrfr's own exports
and insightface's IResNets convert and reproduce onnxruntime to ~1e-6), then fixed up where
onnx2torch's result is not trainable: it keeps every initialiser that an op takes as an input
(MatMul/Gemm weights it does not fold into a Linear, PReLU slopes, Add/Mul constants, biases of
unfused ops) as a *buffer*, and registers an initialiser that two ops share once per use. Here
every float initialiser becomes an ``nn.Parameter`` (shared ones stay one parameter), except
BatchNormalization's running mean and variance, which stay statistics, and the per-channel
constants of a normalisation the graph applies to its raw input (:func:`input_normalisation`),
which are preprocessing. Float ``Constant`` nodes
(the scalar 0 of ``max(0, x)``, shapes) stay constants: they are structure, not weights.

**Input contract.** lrfr feeds every network the same tensor (uint8 RGB faces →
``(x/255 − 0.5)/0.5``, N×3×H×W, :func:`lrfr_cli.models.preprocess`). :class:`OnnxNet` undoes
that to pixel values and makes what the file wants: channel order, ``(pixel − mean)/std`` and
the layout (NCHW or NHWC). The contract comes from the file's ``metadata_props`` (lrfr's export
writes them) or from options; a file that does not say and gets no option is refused with one
line that names the option, never guessed.

**Rebuilding without pickle.** :class:`OnnxNet` carries its graph as a uint8 buffer
(``onnx_graph``): the ONNX model with the contract in its metadata and the data of the float
initialisers dropped (their values are the module's own parameters, restored from the state
dict). A run fine-tuned from an ONNX file is therefore rebuilt from its checkpoint alone
(:func:`rebuild`), loaded with ``weights_only=True`` like every checkpoint.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import LrfrError

LAYOUTS = ("nchw", "nhwc")
ORDERS = ("rgb", "bgr")
GRAPH_KEY = "onnx_graph"
STRIPPED_MARK = "lrfr.stripped_initializers"
# metadata_props keys (lrfr's export writes these; insightface-style files have none)
META_LAYOUT = "layout"
META_ORDER = "channel_order"
META_MEAN = "pixel_mean"
META_STD = "pixel_std"
META_DIM = "embedding_size"
_BN_STATS = {"BatchNormalization": (3, 4)}  # input slots that hold running statistics
# onnx2torch's Slice indexes with a list (fine in torch 2.14, deprecated): not the user's concern.
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing", category=UserWarning)


class OnnxModelError(LrfrError):
    """An ONNX file lrfr cannot use (not ONNX, wrong inputs/outputs, ambiguous preprocessing)."""


@dataclass(frozen=True)
class InputContract:
    """What the graph's input must be, made from uint8 RGB faces: ``(pixel − mean)/std`` per
    channel in ``channel_order``, laid out as ``layout``, ``size``×``size``; and what comes out."""

    layout: str
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int
    embedding_size: int
    input_name: str
    output_name: str
    sources: dict[str, str] = field(default_factory=dict, compare=False)  # field -> "metadata" | "options" | "shape"

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["pixels"] = ("raw 0..255" if self.is_raw else "(pixel - mean) / std")
        return d

    @property
    def is_raw(self) -> bool:
        return all(m == 0 for m in self.mean) and all(s == 1 for s in self.std)

    def props(self) -> dict[str, str]:
        """The contract as ``metadata_props`` (what :func:`read_contract` reads back)."""
        return {META_LAYOUT: self.layout.upper(), META_ORDER: self.channel_order, META_MEAN: _fmt(self.mean),
                META_STD: _fmt(self.std), META_DIM: str(self.embedding_size), "input_size": str(self.size),
                "input_name": self.input_name, "output_name": self.output_name}

    def numpy_input(self, faces: np.ndarray) -> np.ndarray:
        """uint8 N×H×W×3 RGB faces → the graph's float32 input (exact: no round trip through [-1, 1])."""
        x = faces.astype(np.float32)
        if self.channel_order == "bgr":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)


def _fmt(v: tuple[float, ...]) -> str:
    return ",".join(f"{x:g}" for x in v)


def parse_triple(text: str | float | None, what: str) -> tuple[float, float, float] | None:
    """``127.5`` or ``123.7,116.3,103.5`` → three floats (one per channel, in the file's order)."""
    if text is None or text == "":
        return None
    try:
        vals = [float(t) for t in str(text).replace(" ", "").split(",")]
    except ValueError:
        raise OnnxModelError(f"{what} {text!r}: expected a number or three comma-separated numbers") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3 or not all(np.isfinite(vals)):
        raise OnnxModelError(f"{what} {text!r}: expected a number or three comma-separated numbers")
    return (vals[0], vals[1], vals[2])


# --------------------------------------------------------------------------- reading a file
def load_proto(path: Path) -> Any:
    """The ModelProto of ``path``, checked; not ONNX / truncated / invalid is one line."""

    if not path.is_file():
        raise OnnxModelError(f"--model {path}: no such file")
    data = path.read_bytes()
    return parse_proto(data, str(path))


def parse_proto(data: bytes, label: str, check: bool = True) -> Any:
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError/RuntimeWarning variants
        raise OnnxModelError(f"{label}: not an ONNX model (cannot parse it: {type(e).__name__}); is the file complete?") from None
    if not model.graph.node or not model.graph.output:
        raise OnnxModelError(f"{label}: not an ONNX model (no graph; truncated or another kind of file?)")
    if not check:
        return model
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - the checker raises ValidationError and friends
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise OnnxModelError(f"{label}: invalid ONNX model ({first})") from None
    return model


def _dims(value_info: Any) -> list[int | None]:
    t = value_info.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def graph_inputs(model: Any) -> list[Any]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def metadata(model: Any) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_contract(
    model: Any,
    label: str,
    *,
    layout: str | None = None,
    channel_order: str | None = None,
    mean: Any = None,
    std: Any = None,
    data: bytes | None = None,
) -> InputContract:
    """The file's input contract: options win over ``metadata_props``, the input shape decides
    the layout where it is unambiguous; anything still unknown is a one-line error naming the
    option. Also checks the file is a face embedder: one float image input, an N×D output."""
    import onnx

    ins = graph_inputs(model)
    if len(ins) != 1:
        names = ", ".join(i.name for i in ins) or "none"
        raise OnnxModelError(f"{label}: has {len(ins)} inputs ({names}); a face embedding model takes exactly one image tensor")
    inp = ins[0]
    dims = _dims(inp)
    elem = inp.type.tensor_type.elem_type
    shape_text = "×".join("?" if d is None else str(d) for d in dims) or "scalar"
    if elem != onnx.TensorProto.FLOAT or len(dims) != 4 or not (dims[1] in (3, None) or dims[3] in (3, None)):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "unknown"
        raise OnnxModelError(f"{label}: input {inp.name!r} is {dtype} {shape_text}, not an image tensor "
                             "(float32 N×3×H×W or N×H×W×3)")
    meta = metadata(model)
    sources: dict[str, str] = {}
    # layout: option > metadata > shape
    lay = (layout or "").lower() or None
    if lay is not None:
        sources["layout"] = "options"
    elif meta.get(META_LAYOUT, "").lower() in LAYOUTS:
        lay, sources["layout"] = meta[META_LAYOUT].lower(), "metadata"
    elif dims[1] == 3 and dims[3] != 3:  # a symbolic width is not taken for 3 channels
        lay, sources["layout"] = "nchw", "shape"
    elif dims[3] == 3 and dims[1] != 3:
        lay, sources["layout"] = "nhwc", "shape"
    if lay is not None and lay not in LAYOUTS:
        raise OnnxModelError(f"--layout {layout!r}: choose nchw or nhwc")
    if lay is not None and dims[1 if lay == "nchw" else 3] not in (3, None):
        raise OnnxModelError(f"{label}: --layout {lay} does not fit input {inp.name!r} of shape {shape_text}")
    order = (channel_order or "").lower() or None
    if order in (None, "auto"):
        order = None
        if meta.get(META_ORDER, "").lower() in ORDERS:
            order, sources["channel_order"] = meta[META_ORDER].lower(), "metadata"
    else:
        sources["channel_order"] = "options"
    if order is not None and order not in ORDERS:
        raise OnnxModelError(f"--channel-order {channel_order!r}: choose rgb or bgr")
    m, s = parse_triple(mean, "--pixel-mean"), parse_triple(std, "--pixel-std")
    if (m is None) != (s is None):
        raise OnnxModelError("--pixel-mean and --pixel-std go together (raw 0..255 pixels: --pixel-mean 0 --pixel-std 1)")
    if m is not None:
        sources["pixels"] = "options"
    else:
        mm = meta.get(META_MEAN, meta.get("input_mean"))
        ss = meta.get(META_STD, meta.get("input_std"))
        if mm is not None and ss is not None:
            m, s = parse_triple(mm, f"{label}: metadata pixel_mean"), parse_triple(ss, f"{label}: metadata pixel_std")
            sources["pixels"] = "metadata"
    if s is not None and any(v == 0 for v in s):
        raise OnnxModelError("--pixel-std must not be 0")
    missing = []
    if lay is None:
        missing.append("--layout nchw|nhwc (its input shape does not say)")
    if order is None:
        missing.append("--channel-order rgb|bgr")
    if m is None:
        missing.append("--pixel-mean M --pixel-std S (insightface models: 127.5 127.5; raw 0..255 pixels: 0 1)")
    if missing:
        raise OnnxModelError(f"{label} does not record its preprocessing (no lrfr metadata_props); pass " + " and ".join(missing))
    assert lay is not None and order is not None and m is not None and s is not None
    h, w = (dims[2], dims[3]) if lay == "nchw" else (dims[1], dims[2])
    if h is not None and w is not None and h != w:
        raise OnnxModelError(f"{label}: input {inp.name!r} is {h}×{w}; lrfr's faces are square (112×112)")
    size = int(h or w or int(meta.get("input_size", 112)))
    out_name, dim = _output(model, label, inp.name, lay, size, data)
    return InputContract(layout=lay, channel_order=order, mean=m, std=s, size=size, embedding_size=dim,
                         input_name=inp.name, output_name=out_name, sources=sources)


def _output(model: Any, label: str, input_name: str, layout: str, size: int, data: bytes | None) -> tuple[str, int]:
    """The embedding output and its width: declared N×D, or (symbolic D) measured by one
    onnxruntime run on a blank face; anything but a rank-2 output is refused."""
    out = model.graph.output[0]
    dims = _dims(out)
    text = "×".join("?" if d is None else str(d) for d in dims) or "scalar"
    if len(dims) != 2:
        raise OnnxModelError(f"{label}: output {out.name!r} has shape {text}; expected N×D embeddings")
    if dims[1]:
        return out.name, int(dims[1])
    shape = (1, 3, size, size) if layout == "nchw" else (1, size, size, 3)
    try:
        got = ort_session(data if data is not None else model.SerializeToString()).run([out.name], {input_name: np.zeros(shape, np.float32)})[0]
    except LrfrError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise OnnxModelError(f"{label}: onnxruntime cannot run it on a {'×'.join(map(str, shape))} input ({str(e).splitlines()[0][:160]})") from None
    if got.ndim != 2 or got.shape[0] != 1:
        raise OnnxModelError(f"{label}: output {out.name!r} is {'×'.join(map(str, got.shape))} for one face; expected N×D embeddings")
    return out.name, int(got.shape[1])


def ort_providers(device: str = "cpu") -> list[str]:
    """CPU by default; CUDA first where asked for and onnxruntime has it."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(data: bytes, device: str = "cpu", threads: int = 0) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=ort_providers(device))
    except Exception as e:  # noqa: BLE001
        raise OnnxModelError(f"onnxruntime cannot load the model ({str(e).splitlines()[0][:200]})") from None


# --------------------------------------------------------------------------- conversion
def _normalise(model: Any) -> Any:
    """Identity nodes that forward an initialiser (torch's exporter writes one where two weights
    were equal at export time) become a copy of that initialiser under the output's name: the
    converter wants a Conv's weight to be an initialiser, and the two weights stay independent,
    as they were in the network that was exported."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    if not any(n.op_type == "Identity" and n.input and n.input[0] in inits for n in model.graph.node):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    keep = []
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input and n.input[0] in inits:
            copy = m.graph.initializer.add()
            copy.CopyFrom(inits[n.input[0]])
            copy.name = n.output[0]
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def _compat_export_globals() -> None:
    """onnx2torch's modules (Shape, Gather, ...) read the export opset from the
    ``symbolic_helper`` module it imported, when a converted graph is exported again (``lrfr
    export`` of a run fine-tuned from ONNX). In torch 2.14 that is the exporter's module, unless
    torchvision.ops (MTCNN's nms) was imported first: then it is the backward-compatibility
    module ``torch/onnx/symbolic_helper.py``, which re-exports only ``__all__`` (no ``GLOBALS``),
    and every such export fails. Give it the exporter's ``GLOBALS``."""
    import sys

    from onnx2torch.utils import common
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    for mod in (common.symbolic_helper, sys.modules.get("torch.onnx.symbolic_helper")):
        if mod is not None and not hasattr(mod, "GLOBALS"):
            mod.GLOBALS = GLOBALS


def _convert_graph(model: Any) -> nn.Module:
    """onnx2torch's GraphModule with every float initialiser a Parameter (module docstring)."""
    try:
        from onnx2torch import convert
    except ImportError as e:  # pragma: no cover - a dependency of lrfr
        raise LrfrError(f"converting ONNX to torch needs onnx2torch ({e}); pip install onnx2torch") from e
    _compat_export_globals()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gm = convert(model, attach_onnx_mapping=True)
        except NotImplementedError as e:
            raise OnnxModelError(f"cannot convert the graph to torch for training: {str(e).splitlines()[0][:200]}") from None
        except Exception as e:  # noqa: BLE001 - the converter raises many types on unusual graphs
            raise OnnxModelError(f"cannot convert the graph to torch for training ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    _promote_initialisers(gm, model)
    return gm


def input_normalisation(model: Any) -> set[str]:
    """Initialisers of the graph's own input normalisation: per-channel (≤ 3 values) constants of
    the Sub/Add/Mul/Div chain applied to the input before any weighted op (the shared
    MobileFace's ``(x − 127.5) · 0.0078125``). They are part of the input contract, not learned
    weights: trained, a scale that multiplies raw 0..255 pixels gets a gradient ~10⁵ times its
    value and throws SGD off in one step."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    reached = {i.name for i in graph_inputs(model)}
    found: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("Sub", "Add", "Mul", "Div") or not any(i in reached for i in node.input):
            continue
        others = [i for i in node.input if i not in reached]
        if len(others) != 1 or others[0] not in inits or int(np.prod(numpy_helper.to_array(inits[others[0]]).shape)) > 3:
            continue
        found.add(others[0])
        reached.update(node.output)
    return found


def _promote_initialisers(gm: Any, model: Any) -> None:
    """Buffers in ``gm.initializers`` → Parameters (floats, not BN statistics, not the input
    normalisation), shared ones tied."""
    stats: set[str] = set(input_normalisation(model))
    for node in model.graph.node:
        for slot in _BN_STATS.get(node.op_type, ()):
            if slot < len(node.input):
                stats.add(node.input[slot])
    container = gm.initializers
    by_onnx: dict[str, str] = {}  # ONNX initialiser name -> the buffer that stands for it
    keep_stats: set[str] = set()
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mapping = getattr(gm.get_submodule(node.target), "onnx_mapping", None)
        if mapping is None:
            continue
        onnx_inputs = [n for n in mapping.inputs if n]  # skipped (empty) inputs are not args
        args = [a for a in list(node.args) + list(node.kwargs.values()) if a is not None]
        for onnx_name, arg in zip(onnx_inputs, args):
            if getattr(arg, "op", None) != "get_attr" or not str(arg.target).startswith("initializers."):
                continue
            first = by_onnx.setdefault(onnx_name, str(arg.target).split(".", 1)[1])
            arg.target = f"initializers.{first}"  # a shared initialiser stays one tensor
            if onnx_name in stats:
                keep_stats.add(first)
    used = {str(n.target).split(".", 1)[1] for n in gm.graph.nodes if n.op == "get_attr" and str(n.target).startswith("initializers.")}
    for name, buf in list(container.named_buffers(recurse=False)):
        delattr(container, name)
        if name not in used:
            continue
        if buf.is_floating_point() and name not in keep_stats:
            container.register_parameter(name, nn.Parameter(buf.clone()))
        else:
            container.register_buffer(name, buf)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _strip(model: Any, contract: InputContract) -> bytes:
    """The model with the contract in its metadata and its float initialisers emptied (their
    values live in the module's state dict); the dims stay, so :func:`rebuild` can refill them."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    stripped = []
    for init in m.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
            init.ClearField("raw_data")
            init.ClearField("float_data")
            init.ClearField("double_data")
            init.ClearField("int32_data")
            stripped.append(init.name)
    props = {**metadata(m), **contract.props(), STRIPPED_MARK: json.dumps(stripped)}
    del m.metadata_props[:]
    for k, v in props.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    return m.SerializeToString()


def _refill(model: Any) -> Any:
    """Zero data for the initialisers :func:`_strip` emptied (the state dict overwrites them)."""
    import onnx
    from onnx import numpy_helper

    names = set(json.loads(metadata(model).get(STRIPPED_MARK, "[]")))
    for i, init in enumerate(model.graph.initializer):
        if init.name in names:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.zeros(tuple(init.dims), dtype), init.name))
    return model


class OnnxNet(nn.Module):
    """An imported ONNX network behind lrfr's standard input (module docstring)."""

    def __init__(self, graph: nn.Module, contract: InputContract, graph_bytes: bytes) -> None:
        super().__init__()
        self.graph = graph
        self.contract = contract
        self.register_buffer(GRAPH_KEY, torch.frombuffer(bytearray(graph_bytes), dtype=torch.uint8).clone())
        # lrfr input x = (p/255 - 0.5)/0.5  =>  p = 127.5 x + 127.5;  graph input = (p - mean)/std
        mean, std = torch.tensor(contract.mean), torch.tensor(contract.std)
        if contract.channel_order == "bgr":
            perm = [2, 1, 0]
        else:
            perm = [0, 1, 2]
        self.perm = perm
        self.register_buffer("_scale", (127.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", ((127.5 - mean) / std).view(1, 3, 1, 1), persistent=False)

    @property
    def embedding_size(self) -> int:
        return self.contract.embedding_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm != [0, 1, 2]:
            x = x[:, self.perm]
        x = x * self._scale.to(x.dtype) + self._shift.to(x.dtype)
        if self.contract.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        out = self.graph(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1)


def to_torch(model: Any, contract: InputContract) -> OnnxNet:
    """A trainable :class:`OnnxNet` of ``model`` (its weights), checked to be rebuildable."""
    model = _normalise(model)
    graph = _convert_graph(model)
    net = OnnxNet(graph, contract, _strip(model, contract))
    net.eval()
    return net


def rebuild(state: dict[str, torch.Tensor], label: str = "checkpoint") -> OnnxNet:
    """The :class:`OnnxNet` whose state dict is ``state`` (its ``onnx_graph`` entry holds the graph)."""

    raw = state.get(GRAPH_KEY)
    if raw is None or raw.dtype != torch.uint8:
        raise LrfrError(f"{label}: no {GRAPH_KEY} entry; not a model imported from ONNX")
    data = raw.cpu().numpy().tobytes()
    model = _refill(parse_proto(data, label, check=False))
    meta = metadata(model)
    contract = InputContract(
        layout=meta[META_LAYOUT].lower(), channel_order=meta[META_ORDER], mean=parse_triple(meta[META_MEAN], "mean"),  # type: ignore[arg-type]
        std=parse_triple(meta[META_STD], "std"), size=int(meta["input_size"]), embedding_size=int(meta[META_DIM]),  # type: ignore[arg-type]
        input_name=meta["input_name"], output_name=meta["output_name"], sources={"all": "checkpoint"},
    )
    graph = _convert_graph(model)
    net = OnnxNet(graph, contract, data)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise LrfrError(f"{label}: does not match its ONNX graph ({len(missing)} missing, {len(unexpected)} unexpected keys"
                        f"{', e.g. ' + (missing or unexpected)[0] if missing or unexpected else ''})")
    net.load_state_dict(state)
    net.eval()
    return net


def sha256_file(path: Path) -> str:
    from ..workspace import file_digest

    return file_digest(path, "sha256")


def float_weights(net: OnnxNet) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainable parameters, float buffers) of the imported graph: what tests and --help count."""
    params = {k: v for k, v in net.graph.named_parameters()}
    bufs = {k: v for k, v in net.graph.named_buffers() if v.is_floating_point()}
    return params, bufs


__all__ = [
    "InputContract",
    "OnnxModelError",
    "OnnxNet",
    "float_weights",
    "load_proto",
    "ort_session",
    "parse_proto",
    "read_contract",
    "rebuild",
    "sha256_file",
    "to_torch",
]
