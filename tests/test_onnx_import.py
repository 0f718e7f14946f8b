"""ONNX → trainable torch module (``models/onnx_import.py``) and ``lrfr finetune --from model.onnx``.

References are independent: onnxruntime on the file itself, the torch module lrfr exported, a
graph written by hand with ``onnx.helper`` (so which tensor is a weight is known without asking
the converter), and hashlib for the recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import make_identity_faces

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lrfr_cli.models import build_backbone, preprocess  # noqa: E402
from lrfr_cli.models import onnx_import as oi  # noqa: E402

MOBILEFACE_OPTS = {"channel_order": "rgb", "mean": "0", "std": "1"}  # its README: RGB, raw 0..255


def _mobileface(data_dir: Path) -> Path:
    p = data_dir / "models" / "mobileface_112_rgb_nhwc.onnx"
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    return p


def _faces(data_dir: Path, n: int = 6) -> np.ndarray:
    root = data_dir / "celeba_subset" / "images"
    people = sorted(p for p in root.iterdir() if p.is_dir())[::50][:n]
    return np.stack([np.asarray(Image.open(min(p.iterdir())).convert("RGB")) for p in people])


def _torch_out(net: torch.nn.Module, faces: np.ndarray) -> np.ndarray:
    x = preprocess(torch.from_numpy(faces).permute(0, 3, 1, 2))
    with torch.no_grad():
        return net.eval()(x).numpy()


def _tol(ref: np.ndarray) -> float:
    """fp32 kernels in another order plus the pixel → [-1, 1] → pixel round trip: a few 1e-7 of
    the largest magnitude each; 1e-5 of it leaves a wide margin on any CPU."""
    return 1e-5 * float(np.abs(ref).max())


def test_shared_mobileface_converts_trainable_and_equals_onnxruntime(data_dir):
    path = _mobileface(data_dir)
    model = oi.load_proto(path)
    c = oi.read_contract(model, str(path), **MOBILEFACE_OPTS)
    assert (c.layout, c.size, c.embedding_size, c.sources["layout"]) == ("nhwc", 112, 256, "shape")
    net = oi.to_torch(model, c)
    faces = _faces(data_dir)
    # the reference: a plain onnxruntime forward on raw RGB pixels, NHWC, as its README says
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": faces.astype(np.float32)})[0]
    got = _torch_out(net, faces)
    assert got.shape == (len(faces), 256)
    assert np.abs(got - want).max() <= _tol(want)
    # every float initialiser of the file is a trainable parameter, except the 2 per-channel
    # constants of its in-graph input normalisation (x − mean)·scale
    floats = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    norm = oi.input_normalisation(model)
    assert len(norm) == 2 and all(floats[n].size <= 3 for n in norm)
    params, buffers = oi.float_weights(net)
    assert all(p.requires_grad for p in params.values())
    assert len(params) == len(floats) - 2
    assert sum(p.numel() for p in params.values()) == sum(a.size for n, a in floats.items() if n not in norm)
    # what stays a buffer: the normalisation and scalar constants of the graph (max(0, x) etc.)
    assert sum(b.numel() for b in buffers.values()) == 2 + sum(1 for n in model.graph.node if n.op_type == "Constant"
                                                               and n.attribute[0].t.data_type == TensorProto.FLOAT)


def test_ambiguous_file_is_refused_with_the_option_to_pass(data_dir):
    path = _mobileface(data_dir)
    model = oi.load_proto(path)
    with pytest.raises(oi.OnnxModelError) as e:
        oi.read_contract(model, str(path))
    msg = str(e.value)
    assert "\n" not in msg and "--channel-order" in msg and "--pixel-mean" in msg and "--layout" not in msg
    with pytest.raises(oi.OnnxModelError, match="--pixel-std"):
        oi.read_contract(model, str(path), channel_order="rgb", mean="0")
    with pytest.raises(oi.OnnxModelError, match="nchw does not fit"):
        oi.read_contract(model, str(path), layout="nchw", **MOBILEFACE_OPTS)


def test_layout_from_the_shape_only_where_it_is_unambiguous(tmp_path):
    def model(shape: list) -> object:
        g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m

    opts = {"channel_order": "rgb", "mean": "127.5", "std": "127.5"}
    assert oi.read_contract(model(["N", 3, "H", "W"]), "m", **opts).layout == "nchw"  # channels known, H and W symbolic
    for shape in (["N", "C", "H", "W"], ["N", 3, 3, 3]):  # nothing, or everything, is 3: the shape cannot say
        with pytest.raises(oi.OnnxModelError, match="--layout nchw\\|nhwc"):
            oi.read_contract(model(shape), "m", **opts)
    c = oi.read_contract(model(["N", "C", "H", "W"]), "m", layout="nchw", **opts)
    assert (c.layout, c.size, c.embedding_size, c.sources["layout"]) == ("nchw", 112, 3, "options")


def _hand_made(tmp: Path, layout: str = "nchw", size: int = 8) -> tuple[Path, dict[str, np.ndarray]]:
    """Conv → BatchNorm (stats as initialisers) → PRelu → a shared MatMul weight used twice
    (tied) → Add bias → output N×6; 3×size×size input, no metadata."""
    rng = np.random.default_rng(0)
    w = {
        "conv_w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, 4).astype(np.float32),
        "bn_s": (1 + 0.1 * rng.normal(size=4)).astype(np.float32),
        "bn_b": (0.1 * rng.normal(size=4)).astype(np.float32),
        "bn_m": (0.1 * rng.normal(size=4)).astype(np.float32),
        "bn_v": (0.5 + rng.random(4)).astype(np.float32),
        "slope": np.full((4, 1, 1), 0.25, np.float32),
        "fc": rng.normal(0, 0.2, (4, 6)).astype(np.float32),
        "fc2": rng.normal(0, 0.2, (6, 6)).astype(np.float32),
        "bias": rng.normal(0, 0.1, 6).astype(np.float32),
    }
    nodes = []
    src = "x"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]))
        src = "xt"
    nodes += [
        helper.make_node("Conv", [src, "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["b"]),
        helper.make_node("PRelu", ["b", "slope"], ["p"]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["m"]),
        helper.make_node("MatMul", ["m", "fc2"], ["m2"]),
        helper.make_node("MatMul", ["m2", "fc2"], ["m3"]),  # fc2 shared by two ops
        helper.make_node("Add", ["m3", "bias"], ["y"]),
    ]
    shape = ["N", 3, size, size] if layout == "nchw" else ["N", size, size, 3]
    g = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
                          [numpy_helper.from_array(v, k) for k, v in w.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    p = tmp / f"hand_{layout}.onnx"
    onnx.save(m, str(p))
    return p, w


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_hand_made_graph_every_weight_a_parameter_bn_stats_stay(tmp_path, layout):
    path, w = _hand_made(tmp_path, layout)
    model = oi.load_proto(path)
    c = oi.read_contract(model, str(path), channel_order="bgr", mean="127.5", std="64")
    assert c.layout == layout and c.embedding_size == 6 and c.size == 8
    net = oi.to_torch(model, c)
    params, buffers = oi.float_weights(net)
    # weights by value: conv w/b, bn scale/bias, slope, fc, fc2 (ONE tensor though used twice), bias
    want = [w[k] for k in ("conv_w", "conv_b", "bn_s", "bn_b", "slope", "fc", "fc2", "bias")]
    got = [p.detach().numpy() for p in params.values()]
    assert len(got) == len(want)
    for arr in want:
        assert sum(1 for g_ in got if g_.shape == arr.shape and np.array_equal(g_, arr)) == 1
    stats = sorted(b.detach().numpy().tolist() for b in buffers.values())
    assert stats == sorted([w["bn_m"].tolist(), w["bn_v"].tolist()])
    # the contract: BGR, (p − 127.5)/64, layout — against onnxruntime fed by hand
    faces = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    x = (faces[..., ::-1].astype(np.float32) - 127.5) / 64
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    want_y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": np.ascontiguousarray(x)})[0]
    assert np.abs(_torch_out(net, faces) - want_y).max() <= _tol(want_y)
    # a step moves every parameter (in eval mode: in train mode BatchNorm cancels the conv
    # bias's gradient exactly); the tied weight is one tensor, so it cannot come apart
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net(preprocess(torch.from_numpy(faces).permute(0, 3, 1, 2))).pow(2).sum().backward()
    opt.step()
    after = net.state_dict()
    for name in params:
        assert not torch.equal(before["graph." + name], after["graph." + name]), name
    # rebuilt from the state dict alone (no file, no pickle)
    blob = tmp_path / "sd.pt"
    torch.save(net.state_dict(), blob)
    again = oi.rebuild(torch.load(blob, weights_only=True))
    assert np.array_equal(_torch_out(again, faces), _torch_out(net, faces))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_lrfr_export_of_a_tiny_net_converts_back(tmp_path, layout):
    """lrfr's own export (BN statistics moved off their init so they matter) → torch again equals the net."""
    from lrfr_cli.embed import LoadedModel
    from lrfr_cli.models.onnx_export import metadata, to_onnx_bytes, with_metadata

    net = build_backbone("tiny", 48)
    g = torch.Generator().manual_seed(0)
    for k, t in net.state_dict().items():
        if k.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=g))
        elif k.endswith("running_mean"):
            t.copy_(0.1 * torch.randn(t.shape, generator=g))
    net.eval()
    lm = LoadedModel(module=net, name="t", backbone="tiny", embedding_size=48, checkpoint=tmp_path, sha1="0" * 40, source="run")
    data = with_metadata(to_onnx_bytes(lm, layout=layout), metadata(lm, layout))
    model = oi.parse_proto(data, "x")
    c = oi.read_contract(model, "x")  # everything from lrfr's metadata_props
    assert (c.layout, c.channel_order, c.mean, c.std, c.embedding_size) == (layout, "rgb", (127.5,) * 3, (127.5,) * 3, 48)
    conv = oi.to_torch(model, c)
    faces = np.random.default_rng(2).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    want = _torch_out(net, faces)
    assert np.abs(_torch_out(conv, faces) - want).max() <= _tol(want)
    # every float initialiser (after the exporter's Identity aliases are made copies) is a
    # parameter, except BatchNormalization's running statistics
    model = oi._normalise(model)
    stats = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
    floats = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and i.name not in stats]
    params, buffers = oi.float_weights(conv)
    assert sum(p.numel() for p in params.values()) == sum(a.size for a in floats)
    assert all(k.endswith(("running_mean", "running_var")) for k in buffers)


# --------------------------------------------------------------------------- finetune --from x.onnx
FT = ["--method", "distill", "--p", "2", "--k", "4", "--optimizer", "adamw", "--lr", "1e-4", "--device", "cpu",
      "--threads", "1", "--log-every", "1"]


def test_finetune_from_onnx_every_weight_changes_and_eval_export_take_it(cli, tmp_path, data_dir):
    path = _mobileface(data_dir)
    faces = make_identity_faces(tmp_path / "faces", 3, 8, seed=1, noise=25.0)
    ws = tmp_path / "ws"
    r = cli(ws, "finetune", "--from", path, "--data", faces, *FT, "--max-steps", "2", "--workers", "0", "--run", "ft")
    assert r.exit_code == 2 and "--channel-order" in r.stderr and not (ws / "runs" / "ft").exists()
    r = cli(ws, "finetune", "--from", path, "--data", faces, *FT, "--max-steps", "3", "--workers", "0", "--run", "ft",
            "--channel-order", "rgb", "--pixel-mean", "0", "--pixel-std", "1", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    cfg = json.loads((ws / "runs" / "ft" / "config.json").read_text())
    assert cfg["parent"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert cfg["backbone"] == "onnx" and cfg["embedding_size"] == 256
    assert cfg["parent"]["input_contract"]["layout"] == "nhwc"
    ckpt = torch.load(ws / "runs" / "ft" / "checkpoints" / "last.pt", weights_only=True)
    original = oi.to_torch(oi.load_proto(path), oi.read_contract(oi.load_proto(path), str(path), **MOBILEFACE_OPTS))
    tuned = oi.rebuild(ckpt["model"])
    names = [n for n, _ in original.named_parameters()]
    assert len(names) == 33
    before, after = dict(original.named_parameters()), dict(tuned.named_parameters())
    unchanged = [n for n in names if torch.equal(before[n], after[n])]
    assert not unchanged
    for n, b in original.named_buffers():  # the input normalisation and graph constants stay
        if b.is_floating_point() and "running" not in n:
            assert torch.equal(b, dict(tuned.named_buffers())[n]), n
    # eval and export take the run like any other (256-d); the run needs no ONNX file any more
    pairs = tmp_path / "mini.txt"
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()[1:]
    pairs.write_text("3\n" + "\n".join(lines[:3] + lines[500:503]) + "\n")
    r = cli(ws, "eval", "--dataset", "lfw", "-m", "runs/ft", "--data", data_dir / "lfw", "--pairs", pairs, "--align", "center-crop",
            "--sizes", "8,112", "--workers", "0", "--name", "mini", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.json()["model"]["embedding_size"] == 256 and r.json()["model"]["input_contract"]["layout"] == "nhwc"
    r = cli(ws, "export", "-m", "runs/ft", "--check-count", "3", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    meta = {p.key: p.value for p in onnx.load(r.json()["path"]).metadata_props}
    assert meta["embedding_size"] == "256" and meta["layout"] == "NCHW"


def test_finetune_from_onnx_kill9_rerun_resumes(cli, tmp_path, data_dir):
    from test_kill_rerun import _accepted, _manifest, _preempted

    path = _mobileface(data_dir)
    faces = make_identity_faces(tmp_path / "faces", 3, 8, seed=1, noise=25.0)
    ws = tmp_path / "ws"
    run = ws / "runs" / "f"
    args = ["finetune", "--from", str(path), "--data", str(faces), *FT, "--max-steps", "8", "--checkpoint-every", "2",
            "--workers", "1", "--run", "f", "--channel-order", "rgb", "--pixel-mean", "0", "--pixel-std", "1"]
    with _preempted(ws, args, lambda: (run / "checkpoints" / "last.pt").is_file(), die_with_parent=True):
        assert _manifest(run)["status"] == "running"
        r = cli(ws, *args, "--json")
        _accepted(r)
    assert r.json()["resumed_from"] is not None and r.json()["resumed_from"] >= 2
    assert r.json()["steps"] == 8 and _manifest(run)["status"] == "complete"


def test_converted_graph_exports_again_whatever_the_import_order(data_dir):
    """onnx2torch's Shape reads the export opset from the ``symbolic_helper`` it imported; in
    torch 2.14 that is the compatibility module without ``GLOBALS`` when torchvision.ops (MTCNN's
    nms) was imported before onnx2torch. A fresh process that does that first must still export
    a converted MobileFace (it has a Shape node)."""
    import subprocess
    import sys

    path = _mobileface(data_dir)
    code = (
        "import torchvision.ops\n"
        "from pathlib import Path\n"
        "from lrfr_cli.embed import LoadedModel\n"
        "from lrfr_cli.models.onnx_export import to_onnx_bytes\n"
        "from lrfr_cli.models import onnx_import as oi\n"
        f"p = Path({str(path)!r})\n"
        "m = oi.load_proto(p)\n"
        "net = oi.to_torch(m, oi.read_contract(m, str(p), channel_order='rgb', mean='0', std='1'))\n"
        "lm = LoadedModel(module=net, name='x', backbone='onnx', embedding_size=256, checkpoint=p, sha1='0', source='onnx')\n"
        "print(len(to_onnx_bytes(lm)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip().splitlines()[-1]) > 1_000_000
