"""The Deep Siamese seed's LFW protocol: probe up-sampling filter, 5-point landmark files, a 128-px
network. Checked against PIL (its resize is what the seed used) and OpenCV warps built here."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lrfr_cli.data.degrade import DegradeSpec, degrade_array
from lrfr_cli.data.images import load_rgb
from lrfr_cli.data.sources import LfwCenterCrop
from lrfr_cli.embed import extract
from lrfr_cli.errors import LrfrError
from lrfr_cli.models import build_backbone
from lrfr_cli.protocols.lfw import LfwLandmarks, read_lfw_landmarks

ARCFACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])
NAME = "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"


def lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows, float), np.array(rhs, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


@pytest.fixture
def face(data_dir: Path) -> np.ndarray:
    return LfwCenterCrop(data_dir / "lfw").load(f"lfw-deepfunneled/{NAME}")


@pytest.mark.parametrize("size", [8, 16, 20])
def test_up_methods_equal_pil_and_opencv(face: np.ndarray, size: int) -> None:
    small = degrade_array(face, DegradeSpec(size=size, upsample=False))
    pil = {m: np.asarray(Image.fromarray(small).resize((112, 112), f)).astype(int)
           for m, f in (("pil-bicubic", Image.BICUBIC), ("nearest", Image.NEAREST))}
    cv = {m: cv2.resize(small, (112, 112), interpolation=f).astype(int)
          for m, f in (("bicubic", cv2.INTER_CUBIC), ("bilinear", cv2.INTER_LINEAR))}
    for m, want in {**pil, **cv}.items():
        got = degrade_array(face, DegradeSpec(size=size, up_method=m)).astype(int)
        assert np.abs(got - want).max() <= 1, m
    # the choice matters: OpenCV's a=-0.75 and PIL's a=-0.5 differ by several grey levels
    assert np.abs(pil["pil-bicubic"] - cv["bicubic"]).max() >= 4


def test_bad_up_method_is_an_error() -> None:
    with pytest.raises(LrfrError, match="--up-method"):
        DegradeSpec(size=8, up_method="lanczos")


def test_landmark_warps_equal_opencv(data_dir: Path) -> None:
    lms = read_lfw_landmarks(data_dir / "protocols" / "lfw_landmarks" / "LFW.csv")
    tab = read_lfw_landmarks(data_dir / "protocols" / "lfw_landmarks" / "lfw_landmark.txt")
    assert len(lms) == 13233 and NAME in tab
    img = load_rgb(data_dir / "lfw" / "lfw-deepfunneled" / NAME)
    lm = lms[NAME]
    rel = f"lfw-deepfunneled/{NAME}"
    ours = LfwLandmarks(root=data_dir / "lfw", landmarks=lms, name="t", size=112).load(rel)
    want = cv2.warpAffine(img, lstsq_similarity(lm, ARCFACE), (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    assert np.abs(ours.astype(int) - want.astype(int)).max() <= 1
    # the seed's crop: 96x112 template (x - 8) scaled to 128, bicubic, black border
    seed = LfwLandmarks(root=data_dir / "lfw", landmarks=lms, name="t", size=128, style="seed-landmarks").load(rel)
    tpl = (ARCFACE - [8, 0]) * 128 / 112
    want = cv2.warpAffine(img, lstsq_similarity(lm, tpl), (128, 128), flags=cv2.INTER_CUBIC)
    assert seed.shape == (128, 128, 3) and np.abs(seed.astype(int) - want.astype(int)).max() <= 1


def test_malformed_landmark_file_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "lm.csv"
    f.write_text("A/A_0001.jpg,1,2,3,4,5,6,7,8,9,10\nB/B_0001.jpg,1,2,3\n")
    with pytest.raises(LrfrError, match=r"lm.csv:2"):
        read_lfw_landmarks(f)


def pixel_embedding(x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1) - 0.4


def test_seed_protocol_end_to_end_at_128(cli, ws, data_dir, tmp_path, monkeypatch) -> None:
    """--align seed-landmarks --up-method pil-bicubic with a 128-px network: each probe's embedding
    equals the seed's pipeline written out here (OpenCV warp, PIL down and up)."""
    seen: set[tuple[int, int]] = set()

    def fake_forward(model, x, precision):  # type: ignore[no-untyped-def]
        seen.add(tuple(x.shape[-2:]))
        return pixel_embedding(x)

    monkeypatch.setattr(extract, "forward", fake_forward)
    run = ws / "runs" / "seed128"
    (run / "checkpoints").mkdir(parents=True)
    cfg = {"backbone": "tiny", "embedding_size": 512, "input_size": 128}
    torch.save({"model": build_backbone("tiny").state_dict(), "config": cfg}, run / "checkpoints" / "last.pt")
    (run / "config.json").write_text(json.dumps(cfg))
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()[1:]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t3\n" + "\n".join(lines[:3] + lines[500:503] + lines[10:13] + lines[510:513]) + "\n")
    lm_file = data_dir / "protocols" / "lfw_landmarks" / "LFW.csv"
    r = cli(ws, "eval", "--dataset", "lfw", "-m", "seed128", "--data", str(data_dir / "lfw"), "--pairs", str(pairs),
            "--align", "seed-landmarks", "--landmarks", str(lm_file), "--up-method", "pil-bicubic",
            "--sizes", "16,128", "--workers", "0", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = r.json()
    assert seen == {(128, 128)}
    assert doc["images"]["align"] == "seed-landmarks" and doc["degradation"]["up_method"] == "pil-bicubic"
    assert sorted(doc["results"]) == ["128", "16"]
    cache = Path(doc["embeddings"]["cache"])
    with np.load(cache / "16px_bicubic_up-pil-bicubic.npz") as z:
        got = dict(zip([str(k) for k in z["keys"]], z["emb"]))
    lms = read_lfw_landmarks(lm_file)
    tpl = (ARCFACE - [8, 0]) * 128 / 112
    for rel in list(got)[:4]:
        key = "/".join(rel.split("/")[-2:])
        img = cv2.warpAffine(load_rgb(data_dir / "lfw" / rel), lstsq_similarity(lms[key], tpl), (128, 128), flags=cv2.INTER_CUBIC)
        lr = Image.fromarray(img).resize((16, 16), Image.BICUBIC).resize((128, 128), Image.BICUBIC)
        want = pixel_embedding(torch.from_numpy(np.asarray(lr).copy()).permute(2, 0, 1)[None])[0].numpy()
        # PIL's down-sampling and ours agree within 2 grey levels; a 32x32-pixel mean moves far less
        assert np.abs(got[rel] - want).max() < 2 / 255


def test_bad_up_method_on_the_cli(cli, ws) -> None:
    r = cli(ws, "eval", "--dataset", "lfw", "-m", "x", "--up-method", "lanczos")
    assert r.exit_code != 0 and "--up-method 'lanczos'" in r.stderr
