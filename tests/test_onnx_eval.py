"""``lrfr eval --model x.onnx`` (onnxruntime), the export → eval round trip in both layouts, and
bad ONNX files.

The eval of the shared MobileFace is checked against a plain onnxruntime forward of the same
112×112 images (read with PIL, raw RGB NHWC as its README says, one image per run) scored by
hand: cosine, per fold the accuracy-maximising threshold on the other nine folds found by a
brute-force loop, and scikit-learn's AUC.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fake_runs import tiny_run  # noqa: E402

RAW_RGB = ["--channel-order", "rgb", "--pixel-mean", "0", "--pixel-std", "1"]


def _mobileface(data_dir: Path) -> Path:
    p = data_dir / "models" / "mobileface_112_rgb_nhwc.onnx"
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    return p


def _subset(data_dir: Path, tmp: Path, per_fold: int) -> tuple[Path, Path, list[tuple[str, str, bool, int]]]:
    """A View 2 subset (10 folds × ``per_fold`` matched + mismatched pairs) and its images as
    112×112 PNG-coded files under LFW's names (centre 128-px crop of the deep-funneled photo,
    resized with PIL), so ``--align none`` and the hand-made reference read the same pixels."""
    lines = (data_dir / "lfw" / "pairs.txt").read_text().splitlines()
    n = int(lines[0].split()[1])
    chosen, pairs = [], []
    for f in range(10):
        block = lines[1 + 2 * n * f : 1 + 2 * n * (f + 1)]
        for part in (block[:per_fold], block[n : n + per_fold]):
            for line in part:
                t = line.split("\t")
                a, b = ((t[0], int(t[1])), (t[0], int(t[2]))) if len(t) == 3 else ((t[0], int(t[1])), (t[2], int(t[3])))
                pairs.append((f"{a[0]}/{a[0]}_{a[1]:04d}.jpg", f"{b[0]}/{b[0]}_{b[1]:04d}.jpg", len(t) == 3, f))
                chosen.append(line)
    pf = tmp / "pairs_subset.txt"
    pf.write_text(f"10\t{per_fold}\n" + "\n".join(chosen) + "\n")
    root = tmp / "lfw112"
    for rel in sorted({r for a, b, _, _ in pairs for r in (a, b)}):
        img = Image.open(data_dir / "lfw" / "lfw-deepfunneled" / rel).convert("RGB").crop((61, 61, 189, 189)).resize((112, 112), Image.BILINEAR)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel, format="PNG")  # lossless under the .jpg name the pairs file implies
    return pf, root, pairs


def _by_hand_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> list[float]:
    accs = []
    for k in range(10):
        tr, te = folds != k, folds == k
        best_t, best_a = None, -1.0
        cands = np.unique(scores[tr])
        for t in np.r_[cands[0] - 1, (cands[:-1] + cands[1:]) / 2, cands[-1] + 1]:
            a = np.mean((scores[tr] >= t) == same[tr])
            if a > best_a:  # strict: the lowest threshold among equals
                best_t, best_a = t, a
        accs.append(float(np.mean((scores[te] >= best_t) == same[te])))
    return accs


@pytest.mark.slow  # ~560 faces through MobileFace twice (lrfr's pass and the reference)
def test_eval_shared_mobileface_equals_plain_onnxruntime_scored_by_hand(cli, tmp_path, data_dir):
    from sklearn.metrics import roc_auc_score

    model = _mobileface(data_dir)
    pf, root, pairs = _subset(data_dir, tmp_path, 15)
    ws = tmp_path / "ws"
    r = cli(ws, "eval", "--dataset", "lfw", "-m", model, *RAW_RGB, "--data", root, "--pairs", pf, "--align", "none", "--sizes", "112",
            "--workers", "0", "--batch-size", "32", "--name", "sub", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = r.json()
    assert doc["model"]["backend"] == "onnxruntime" and doc["model"]["embedding_size"] == 256
    pre = doc["model"]["preprocessing"]
    assert (pre["layout"], pre["channel_order"], pre["pixel_mean"], pre["pixel_std"]) == ("NHWC", "rgb", [0.0] * 3, [1.0] * 3)
    # the reference
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    cache: dict[str, np.ndarray] = {}

    def emb(rel: str) -> np.ndarray:
        if rel not in cache:
            x = np.asarray(Image.open(root / rel).convert("RGB"), dtype=np.float32)[None]
            e = sess.run(None, {"input": x})[0][0].astype(np.float64)
            cache[rel] = e / np.linalg.norm(e)
        return cache[rel]

    scores = np.array([emb(a) @ emb(b) for a, b, _, _ in pairs])
    same = np.array([s for _, _, s, _ in pairs])
    folds = np.array([f for _, _, _, f in pairs])
    res = doc["results"]["112"] if "112" in doc["results"] else doc["results"][next(iter(doc["results"]))]
    res_text = json.dumps(res)
    want = _by_hand_accuracy(scores, same, folds)
    assert res["fold_accuracies"] == pytest.approx(want, abs=1e-12), res_text
    assert res["auc"] == pytest.approx(roc_auc_score(same, scores), abs=1e-9)
    assert 0.8 < np.mean(want) < 1.0  # a real recogniser on real faces: the comparison is not trivial


# --------------------------------------------------------------------------- round trip
def _mini_pairs(data_dir: Path, tmp: Path, n: int = 12) -> Path:
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()[1:]
    f = tmp / "mini.txt"
    f.write_text(f"{n}\n" + "\n".join(lines[:n] + lines[500 : 500 + n]) + "\n")
    return f


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_export_then_eval_onnx_equals_eval_of_the_run(cli, tmp_path, data_dir, layout):
    ws = tmp_path / "ws"
    tiny_run(ws, embedding_size=96, randomise=True, loss="softmax")
    out = tmp_path / f"tiny_{layout}.onnx"
    r = cli(ws, "export", "-m", "runs/tiny", "--layout", layout, "-o", out, "--check-count", "3")
    assert r.exit_code == 0, r.stdout + r.stderr
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert (meta["layout"], meta["channel_order"], meta["pixel_mean"], meta["pixel_std"], meta["embedding_size"]) == (
        layout.upper(), "rgb", "127.5", "127.5", "96")
    pairs = _mini_pairs(data_dir, tmp_path)
    common = ["--dataset", "lfw", "--data", data_dir / "lfw", "--pairs", pairs, "--align", "center-crop", "--sizes", "8,16,112",
              "--workers", "0", "--json"]
    a = cli(ws, "eval", "-m", "runs/tiny", "--backend", "torch", *common, "--name", "run")
    b = cli(ws, "eval", "-m", out, *common, "--name", "onnx")  # no options: the metadata says everything
    c = cli(ws, "eval", "-m", out, "--backend", "torch", *common, "--name", "onnx-in-torch")  # the file converted to torch
    assert a.exit_code == 0 and b.exit_code == 0 and c.exit_code == 0, a.stderr + b.stderr + c.stderr
    ra, rb, rc = a.json(), b.json(), c.json()
    assert rb["model"]["backend"] == "onnxruntime" and rb["model"]["input_contract"]["layout"] == layout
    assert rc["model"]["backend"] == "torch" and rc["embeddings"]["cache"] != rb["embeddings"]["cache"]
    for size in ra["results"]:
        for key in ("accuracy", "fold_accuracies", "auc"):
            assert ra["results"][size][key] == pytest.approx(rb["results"][size][key], abs=1e-12), (size, key)
            assert ra["results"][size][key] == pytest.approx(rc["results"][size][key], abs=1e-12), (size, key)
    # embeddings: the same images through both, cosine >= 0.9999 (read from each eval's cache)
    ea, eb = _embeddings(ra), _embeddings(rb)
    assert ea.keys() == eb.keys() and len(ea) > 40
    cos = [float(ea[k] @ eb[k] / np.linalg.norm(ea[k]) / np.linalg.norm(eb[k])) for k in ea]
    assert min(cos) >= 0.9999


def _embeddings(doc: dict) -> dict[str, np.ndarray]:
    """{variant/image: raw embedding} from an eval's cache folder (``<variant>.npz``: keys, emb)."""
    rows: dict[str, np.ndarray] = {}
    for f in Path(doc["embeddings"]["cache"]).glob("*.npz"):
        with np.load(f, allow_pickle=False) as z:
            rows.update({f"{f.stem}/{k}": v for k, v in zip(z["keys"], z["emb"])})
    return rows


# --------------------------------------------------------------------------- bad files
def _graph(inputs: list, outputs: list, nodes: list, inits: list | None = None) -> bytes:
    g = helper.make_graph(nodes, "bad", inputs, outputs, inits or [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _bad_files(tmp: Path, data_dir: Path) -> dict[str, tuple[Path, str]]:
    img = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 112, 112])
    w = numpy_helper.from_array(np.ones((3 * 112 * 112, 8), np.float32), "w")
    flat = helper.make_node("Flatten", ["x"], ["f"])
    files = {
        "not_onnx": (b"this is a text file, not a model\n" * 10, "not an ONNX model"),
        "truncated": (_mobileface(data_dir).read_bytes()[:50_000], "ONNX model"),
        "two_inputs": (_graph([img, helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8])],
                              [flat, helper.make_node("MatMul", ["f", "w"], ["m"]), helper.make_node("Add", ["m", "y"], ["z"])], [w]),
                       "2 inputs"),
        "not_image": (_graph([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                             [helper.make_node("Relu", ["x"], ["y"])]), "not an image tensor"),
        "not_nxd": (_graph([img], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 112, 112])],
                           [helper.make_node("Relu", ["x"], ["y"])]), "expected N×D"),
        "not_nxd_symbolic": (_graph([img], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "D"])],
                                    [helper.make_node("Reshape", ["x", "s"], ["y"])],
                                    [numpy_helper.from_array(np.array([-1, 3, 112, 112], np.int64), "s")]), "expected N×D"),
    }
    out = {}
    for name, (data, msg) in files.items():
        p = tmp / "models" / f"{name}.onnx"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        out[name] = (p, msg)
    return out


def _written(ws: Path) -> list[str]:
    return sorted(str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_file()) if ws.exists() else []


def test_bad_onnx_files_one_line_exit_2_nothing_written(cli, tmp_path, data_dir):
    ws = tmp_path / "ws"
    pairs = _mini_pairs(data_dir, tmp_path, 2)
    faces = tmp_path / "faces"
    from synthetic import make_identity_faces

    make_identity_faces(faces, 2, 4)
    for name, (path, msg) in _bad_files(tmp_path, data_dir).items():
        opts = ["--channel-order", "rgb", "--pixel-mean", "127.5", "--pixel-std", "127.5"]
        for args in (["eval", "--dataset", "lfw", "-m", path, *opts, "--data", data_dir / "lfw", "--pairs", pairs, "--align", "center-crop"],
                     ["finetune", "--method", "siamese", "--from", path, *opts, "--data", faces, "--p", "2", "--k", "2", "--max-steps", "1"],
                     ["export", "-m", path, *opts, "--no-check"]):
            r = cli(ws, *args)
            err = r.stderr.strip()
            assert r.exit_code == 2, (name, args[0], r.stdout, err)
            assert len(err.splitlines()) == 1 and msg in err and "Traceback" not in err, (name, args[0], err)
            assert _written(ws) == [], (name, args[0], _written(ws))


def test_eval_backend_onnxruntime_of_a_run_exports_once_and_equals_torch(cli, tmp_path, data_dir):
    ws = tmp_path / "ws"
    tiny_run(ws, embedding_size=64, randomise=True, loss="softmax")
    pairs = _mini_pairs(data_dir, tmp_path, 8)
    common = ["--dataset", "lfw", "-m", "runs/tiny", "--data", data_dir / "lfw", "--pairs", pairs, "--align", "center-crop",
              "--sizes", "12,112", "--workers", "0", "--json"]
    t = cli(ws, "eval", *common, "--backend", "torch", "--name", "t")
    o = cli(ws, "eval", *common, "--backend", "onnxruntime", "--name", "o")
    assert t.exit_code == 0 and o.exit_code == 0, t.stderr + o.stderr
    rt, ro = t.json(), o.json()
    assert (rt["model"]["backend"], ro["model"]["backend"]) == ("torch", "onnxruntime")
    assert rt["embeddings"]["cache"] != ro["embeddings"]["cache"]  # each backend has its own cache
    for size in rt["results"]:
        assert rt["results"][size]["fold_accuracies"] == pytest.approx(ro["results"][size]["fold_accuracies"], abs=1e-12)
    ea, eb = _embeddings(rt), _embeddings(ro)
    assert ea.keys() == eb.keys() and min(float(ea[k] @ eb[k] / np.linalg.norm(ea[k]) / np.linalg.norm(eb[k])) for k in ea) >= 0.9999
    exported = list((ws / "cache" / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    again = cli(ws, "eval", *common, "--backend", "onnxruntime", "--name", "o2")
    assert again.exit_code == 0 and again.json()["embeddings"]["computed"] == 0
    assert exported[0].stat().st_mtime_ns == stamp  # the export was reused, not redone
    bad = cli(ws, "eval", *common, "--backend", "onnxruntime", "--precision", "bf16", "--name", "x")
    assert bad.exit_code == 2 and "--precision" in bad.stderr
    bad = cli(ws, "eval", *common, "--pixel-mean", "0", "--pixel-std", "1", "--name", "x")
    assert bad.exit_code == 2 and "only for ONNX files" in bad.stderr
