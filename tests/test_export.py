"""`lrfr export --format onnx`: parity with PyTorch on real aligned faces, metadata, bad input.

The expected embeddings are computed here from the PyTorch module directly, with the
preprocessing written out by hand from the ONNX metadata (not through lrfr's helpers), and the
ONNX graph is run by onnxruntime at batch sizes other than the one it was traced with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lrfr_cli.models import build_backbone

from fake_runs import randomise_weights, tiny_run

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4  # the bar: max |diff| of L2-normalised embeddings


def _faces(data_dir: Path, n: int = 7) -> np.ndarray:
    """Aligned 112x112 CelebA faces of different identities, uint8 RGB N×H×W×3 (read with PIL)."""
    root = data_dir / "celeba_subset" / "images"
    people = sorted(p for p in root.iterdir() if p.is_dir())[:: 40][:n]
    imgs = [np.asarray(Image.open(min(p.iterdir())).convert("RGB")) for p in people]
    assert all(i.shape == (112, 112, 3) for i in imgs)
    return np.stack(imgs)


def _expected(module: nn.Module, faces: np.ndarray, bgr: bool = False) -> np.ndarray:
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float()
    if bgr:
        x = x.flip(1)
    with torch.no_grad():
        e = module.eval()((x - 127.5) / 127.5).double()
    return (e / e.norm(dim=1, keepdim=True)).numpy()


def _onnx(path: Path, faces: np.ndarray, batch: int) -> tuple[np.ndarray, dict[str, str]]:
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    x = faces.transpose(0, 3, 1, 2).astype(np.float32)
    if meta["channel_order"] == "bgr":
        x = x[:, ::-1]
    x = np.ascontiguousarray((x - float(meta["input_mean"])) / float(meta["input_std"]), dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(None, {meta["input_name"]: x[i : i + batch]})[0] for i in range(0, len(x), batch)])
    return out / np.linalg.norm(out, axis=1, keepdims=True), meta


def test_export_of_our_run_matches_pytorch(cli, ws, data_dir) -> None:
    net = tiny_run(ws, "tinyrun", randomise=True, loss="softmax")
    r = cli(ws, "export", "--model", "runs/tinyrun", "--check-count", "6", "--json")
    assert r.exit_code == 0, r.stderr
    out = r.json()
    path = ws / "exports" / "tinyrun" / "model.onnx"
    assert out["path"] == str(path) and out["parity"]["max_abs"] <= TOL and out["parity"]["faces"] == 6
    faces = _faces(data_dir)
    want = _expected(net, faces)
    for batch in (1, 4, len(faces)):  # the batch axis is dynamic: none of these is the traced size 2
        got, meta = _onnx(path, faces, batch)
        assert np.abs(got - want).max() <= TOL, batch
    # sanity: the faces give different embeddings, so equality above is not trivial
    assert (want @ want.T)[~np.eye(len(faces), dtype=bool)].max() < 0.9
    assert meta["channel_order"] == "rgb" and meta["input_size"] == "112" and meta["input_shape"] == "N,3,112,112"
    assert meta["backbone"] == "tiny" and meta["source"] == "run" and "max |diff|" in meta["parity"]
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 112, 112]
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["parity"]["max_abs"] <= TOL
    # same checkpoint again: nothing to do
    again = cli(ws, "export", "--model", "tinyrun", "--check-count", "6", "--json").json()
    assert again["skipped"] is True


@pytest.mark.slow  # IResNet-18: ~10 s to trace and run on 2 shared cores
def test_export_of_an_external_insightface_checkpoint(cli, ws, data_dir, tmp_path) -> None:
    """A bare insightface-layout IResNet-18 state dict (random weights), written to --out."""
    net = build_backbone("ir18")
    randomise_weights(net, seed=1)
    ckpt = tmp_path / "ms1mv3_r18_backbone.pth"
    torch.save(net.state_dict(), ckpt)
    out = tmp_path / "deploy" / "r18.onnx"
    r = cli(ws, "export", "--model", ckpt, "--out", out, "--check-count", "4", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["model"]["backbone"] == "ir18" and not (ws / "exports").exists()
    faces = _faces(data_dir, 5)
    got, meta = _onnx(out, faces, 2)
    assert np.abs(got - _expected(net, faces)).max() <= TOL
    assert meta["source"] == "external" and meta["channel_order"] == "rgb" and meta["embedding_size"] == "512"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_bgr_channel_order_is_recorded_and_applied(cli, ws, data_dir, tmp_path) -> None:
    net = tiny_run(ws, "tinyrun", randomise=True, loss="softmax")
    out = tmp_path / "bgr.onnx"
    r = cli(ws, "export", "-m", "tinyrun", "--channel-order", "bgr", "-o", out, "--check-count", "4")
    assert r.exit_code == 0, r.stderr
    faces = _faces(data_dir, 4)
    got, meta = _onnx(out, faces, 3)
    assert meta["channel_order"] == "bgr"
    assert np.abs(got - _expected(net, faces, bgr=True)).max() <= TOL
    assert np.abs(got - _expected(net, faces, bgr=False)).max() > 10 * TOL  # the order matters for this net


def test_export_bad_inputs(cli, ws, data_dir, tmp_path, monkeypatch) -> None:
    tiny_run(ws, "tinyrun", randomise=True, loss="softmax")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, msg in ((["--format", "tflite"], "--format"), (["--check-images", empty], "no images"),
                      (["--check-images", tmp_path / "nope"], "--check-images")):
        r = cli(ws, "export", "-m", "tinyrun", *args)
        assert r.exit_code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    r = cli(ws, "export", "-m", "runs/missing")
    assert r.exit_code == 2 and "not a run folder" in r.stderr
    # a parity failure writes nothing and exits 1
    import lrfr_cli.export as ex

    monkeypatch.setattr(ex, "TOLERANCE", -1.0)
    r = cli(ws, "export", "-m", "tinyrun", "--check-count", "2", "--force")
    assert r.exit_code == 1 and "differ" in r.stderr
    assert not (ws / "exports" / "tinyrun" / "model.onnx").exists()
