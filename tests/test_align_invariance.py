"""Aligned faces do not depend on how photos are batched, threaded or resumed (issue 18), exactly.

The networks of MTCNN give other bits for other tensor shapes (oneDNN picks kernels per shape and
CPU), so ``lrfr align`` gives every network call a shape that the photo alone decides, or a fixed
one (``lrfr_cli/align/invariant.py``). These tests compare bytes, not tolerances: on every CPU,
every ISA setting, a photo's face must be the same file whatever the batch size, worker count or
thread count. Other CPUs or ISA settings may give other bits; within one setting they may not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lrfr_cli.align.invariant import pnet_on_canvas, pnet_out_size, pyramid_canvas, pyramid_layout, run_fixed_chunks
from lrfr_cli.align.journal import read_landmarks
from lrfr_cli.align.mtcnn import MtcnnDetector, integral_image, resize_from_integral
from lrfr_cli.align.pipeline import align_tree
from lrfr_cli.align.warp import recorded_alignment, warp_with_matrix
from lrfr_cli.data.images import load_rgb

ROOT = Path(__file__).resolve().parents[1]


def _photos(data_dir: Path, dst: Path, n: int) -> Path:
    """n LFW photos (first image of every 240th person) and two larger multi-size photos."""
    lfw = data_dir / "lfw/lfw-deepfunneled"
    for person in sorted(lfw.iterdir())[::240][:n]:
        f = min(person.iterdir())
        (dst / person.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / person.name / f.name)
    raw = data_dir / "raw_photos/facenet_pytorch"
    (dst / "raw").mkdir(parents=True, exist_ok=True)
    for name, side in (("multiface.jpg", 450), ("paul_rudd.jpg", 380)):  # other sizes, six faces in one
        im = cv2.imread(str(raw / name))
        s = side / max(im.shape[:2])
        cv2.imwrite(str(dst / "raw" / name), cv2.resize(im, None, fx=s, fy=s, interpolation=cv2.INTER_AREA))
    return dst


def _digest(out: Path) -> dict[str, str]:
    """sha1 of every face file and of landmarks.csv."""
    files = sorted(p for p in out.rglob("*") if p.suffix in (".jpg", ".png") or p.name == "landmarks.csv")
    return {p.relative_to(out).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_batch_sizes_workers_and_threads_give_byte_identical_faces(data_dir: Path, tmp_path: Path) -> None:
    src = _photos(data_dir, tmp_path / "src", 16)
    runs = {}
    for bs in (4, 1, 3, 16):
        res = align_tree(src, tmp_path / f"b{bs}", batch_size=bs, threads=1, select="all")
        assert not res.failures and res.faces >= 18
        runs[f"batch {bs}"] = _digest(tmp_path / f"b{bs}")
    # a decode process and two torch threads (what --workers 1 or --threads 2 change)
    align_tree(src, tmp_path / "w1", batch_size=5, workers=1, threads=2, select="all")
    runs["workers 1, threads 2"] = _digest(tmp_path / "w1")
    ref = runs["batch 4"]
    assert "landmarks.csv" in ref and len(ref) >= 19
    for name, got in runs.items():
        assert got == ref, f"{name}: {sorted(k for k in ref if got.get(k) != ref[k])} differ from batch 4"


_CHILD = """
import hashlib, json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from lrfr_cli.align.pipeline import align_tree
src, out = Path(sys.argv[1]), Path(sys.argv[2])
digests = {}
for bs in (1, 16):
    align_tree(src, out / str(bs), batch_size=bs, threads=1 + (bs == 16), select="all")
    files = sorted(p for p in (out / str(bs)).rglob("*") if p.suffix == ".jpg" or p.name == "landmarks.csv")
    digests[bs] = {p.relative_to(out / str(bs)).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "digests": digests}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("env", [{"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"ATEN_CPU_CAPABILITY": "default"}], ids=["onednn-avx2", "aten-default"])
def test_other_kernels_are_batch_invariant_too(env: dict[str, str], data_dir: Path, tmp_path: Path) -> None:
    """With other kernels forced (another CPU's, in effect), batch sizes 1 and 16 (1 and 2 threads) still agree to the byte."""
    src = _photos(data_dir, tmp_path / "src", 6)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(tmp_path / "out")],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "ATEN_CPU_CAPABILITY" in env:
        assert out["capability"] == "DEFAULT"  # the setting took effect
    d = out["digests"]
    assert len(d["1"]) >= 8
    assert d["1"] == d["16"], [k for k in d["1"] if d["1"][k] != d["16"].get(k)]


def test_network_rows_ignore_their_neighbours() -> None:
    """What fixed chunks rely on: in a call of fixed shape, a row's outputs do not depend on its
    position or on the other rows (R- and O-net, random crops, padded or shuffled)."""
    det = MtcnnDetector("cpu", min_face=30)
    g = torch.Generator().manual_seed(0)
    for net, side, chunk in ((det.rnet, 24, det.rnet_chunk), (det.onet, 48, det.onet_chunk)):
        x = torch.rand(chunk + 5, 3, side, side, generator=g) * 2 - 1
        with torch.inference_mode():
            ref = run_fixed_chunks(net, x, chunk, torch.channels_last)
            perm = torch.randperm(len(x), generator=g)
            shuffled = run_fixed_chunks(net, x[perm], chunk, torch.channels_last)
            alone = run_fixed_chunks(net, x[:1], chunk, torch.channels_last)
            noisy = run_fixed_chunks(net, torch.cat([x[:1], torch.rand(chunk - 1, 3, side, side, generator=g)]), chunk, torch.channels_last)
            plain = net(x[:chunk].contiguous(memory_format=torch.channels_last))
        for a, b, c, d, e in zip(ref, shuffled, alone, noisy, plain):
            assert torch.equal(a[perm], b)
            assert torch.equal(a[:1], c) and torch.equal(a[:1], d[:1])
            assert torch.allclose(a[:chunk], e, atol=1e-5)  # the networks themselves, unchanged


def test_pyramid_canvas_holds_each_level_as_p_net_sees_it_alone() -> None:
    """The canvas layout (even offsets, no overlap) and the P-net run on it reproduce P-net run on
    each level alone, odd and even sides included (ceil-mode pooling at a level's edge)."""
    det = MtcnnDetector("cpu", min_face=20)
    rng = np.random.default_rng(1)
    for h, w in ((61, 47), (90, 90), (37, 128)):
        img = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        sat = integral_image(img)
        levels = tuple(det.level_sizes(h, w))
        spots, (ch, cw) = pyramid_layout(levels)
        assert any(a % 2 for a, _ in levels) and any(b % 2 for _, b in levels)
        taken = np.zeros((ch, cw), dtype=int)
        for (lh, lw), (y, x) in zip(levels, spots):
            assert y % 2 == 0 and x % 2 == 0 and y + lh <= ch and x + lw <= cw
            taken[y : y + lh + lh % 2, x : x + lw + lw % 2] += 1
        assert taken.max() == 1
        with torch.inference_mode():
            canvas = pyramid_canvas(sat, levels, torch.channels_last)
            reg, prob = pnet_on_canvas(det.pnet, canvas, levels, spots)
            for (lh, lw), (y, x) in zip(levels, spots):
                level = (resize_from_integral(sat, lh, lw) - 127.5) * 0.0078125
                assert torch.equal(canvas[:, :, y : y + lh, x : x + lw], level)  # same cells, same sums
                want_reg, want_prob = det.pnet(level)
                oh, ow = pnet_out_size(lh), pnet_out_size(lw)
                assert want_prob.shape[2:] == (oh, ow)
                got_prob = prob[y // 2 : y // 2 + oh, x // 2 : x // 2 + ow]
                got_reg = reg[:, y // 2 : y // 2 + oh, x // 2 : x // 2 + ow]
                assert torch.allclose(got_prob, want_prob[0, 1], atol=1e-5), (lh, lw)
                assert torch.allclose(got_reg, want_reg[0], atol=1e-5), (lh, lw)


@pytest.mark.slow
def test_landmarks_csv_reproduces_the_pixels_exactly(data_dir: Path, tmp_path: Path) -> None:
    """Warping the source photo with the recorded matrix gives the written face, pixel for pixel
    (PNG output), and refitting the recorded landmarks gives the recorded matrix."""
    src = _photos(data_dir, tmp_path / "src", 4)
    out = tmp_path / "out"
    align_tree(src, out, batch_size=4, threads=1, select="all", fmt="png")
    rows = read_landmarks(out / "landmarks.csv")
    assert len(rows) >= 10
    for row in rows:
        m = np.array([[row[f"m{i}{j}"] for j in range(3)] for i in range(2)])
        lm = np.array([[row[f"x{k}"], row[f"y{k}"]] for k in range(1, 6)])
        again = warp_with_matrix(load_rgb(src / row["source"]), m, (112, 112))
        assert np.array_equal(again, load_rgb(out / row["path"])), row["path"]
        lm2, m2 = recorded_alignment(lm)
        assert np.array_equal(lm2, lm) and np.array_equal(m2, m), row["path"]
