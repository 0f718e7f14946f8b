"""The CUDA paths (issue 15): mixed precision, channels_last, compile, nccl, device moves, eval and
align on the GPU against the CPU.

Every test here is marked ``cuda`` and skipped, before any fixture runs, where
``torch.cuda.is_available()`` is false, so CI on a CPU collects them in milliseconds. On a GPU
machine: ``pytest -m cuda tests/test_cuda.py`` (``scripts/gpu_session.sh test`` does it there).

Tolerances: training comparisons reuse the update-relative bound of
``tests/test_train_resume_ddp.py`` (two runs that add the same terms in another order end within
``REL`` of how far they moved; a real divergence is of the order of the update itself); the
GPU-vs-CPU ones are the issue's (embedding cosine ≥ 0.999, accuracies within 0.1 point,
landmarks within 0.5 px).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_resume_ddp import REL, _assert_same_losses, _assert_same_updates, _start_weights, _weights

from lrfr_cli.engine import load_checkpoint

from synthetic import make_identity_faces

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False); run with -m cuda on a GPU machine"),
]

RAW = "raw_photos/facenet_pytorch"


def _metrics(ws: Path, run: str) -> list[dict]:
    return [json.loads(ln) for ln in (ws / "runs" / run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """fp32 on the GPU as on the CPU: TF32 convolutions/matmuls round inputs to 10 mantissa bits
    (~1e-3 relative per product), which would swamp an fp32 reordering tolerance. (Set and
    restored by hand: monkeypatch cannot undo attributes of torch.backends.cuda.matmul.)"""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# --------------------------------------------------------------------------- precisions
PRECISION_CASES = {
    "bf16": ["--precision", "bf16"],
    "fp16-gradscaler": ["--precision", "fp16"],
    "bf16-channels-last": ["--precision", "bf16", "--channels-last"],
    "bf16-channels-last-compile": ["--precision", "bf16", "--channels-last", "--compile"],
}


@pytest.mark.parametrize("case", list(PRECISION_CASES))
def test_train_mixed_precision_layouts_and_compile_learn_without_nan(cli, tmp_path: Path, case: str) -> None:
    """200 steps of mobilefacenet + ArcFace (s=64) on 16 synthetic identities: every logged loss
    finite, every saved tensor finite, and the loss falls to under a tenth of its start (fp32 on
    the CPU goes 35.5 -> 0.01 in 60 steps on this data), so a scaler that skips every step or an
    autocast that breaks the gradients fails here, not only a NaN."""
    faces = make_identity_faces(tmp_path / "faces", identities=16, per=16, seed=0, noise=20.0)
    ws = tmp_path / "ws"
    r = cli(ws, "train", "--data", faces, "--backbone", "mobilefacenet", "--loss", "arcface", "--batch-size", "32",
            "--max-steps", "200", "--log-every", "10", "--workers", "2", "--device", "cuda", "--run", "p", "--json",
            *PRECISION_CASES[case])
    assert r.exit_code == 0, r.stdout + r.stderr
    out = r.json()
    assert out["steps"] == 200
    lines = _metrics(ws, "p")
    losses = np.array([ln["loss"] for ln in lines], dtype=np.float64)
    assert len(losses) == 20 and np.isfinite(losses).all(), losses
    assert losses[-1] < 0.1 * out["first_loss"], f"{case}: loss {out['first_loss']:.3f} -> {losses.tolist()}"
    ck = load_checkpoint(ws / "runs" / "p" / "checkpoints" / "last.pt")
    for part in ("model", "head"):
        for k, v in ck[part].items():
            if v.is_floating_point():
                assert torch.isfinite(v).all(), f"{part}.{k} is not finite"
    if case.startswith("fp16"):
        assert ck["scaler"] and 0 < float(ck["scaler"]["scale"]) < float("inf"), ck["scaler"]
    else:
        assert ck["scaler"] == {}  # GradScaler only for fp16
    assert "device=cuda" in (ws / "runs" / "p" / "log.txt").read_text()


# --------------------------------------------------------------------------- torchrun / nccl
def _train_args(faces: Path, device: str, run_flag: str = "--run-name") -> list[str]:
    return ["train", "--data", str(faces), "--backbone", "sphere20", "--loss", "cosface", "--batch-size", "4",
            "--max-steps", "4", "--workers", "0", "--device", device, "--lr", "0.01", "--log-every", "1",
            "--embedding-size", "64", run_flag, "d"]


def test_torchrun_one_process_equals_plain_run(cli, tmp_path: Path, no_tf32: None) -> None:
    """``torchrun --nproc-per-node 1 lrfr train`` (LOCAL_RANK picks the GPU) ends where the same
    command without torchrun ends. (One rank makes no process group: lrfr joins one only when
    WORLD_SIZE > 1; nccl itself is exercised by the next test.)"""
    faces = make_identity_faces(tmp_path / "faces", identities=3, per=4, seed=1, noise=25.0)
    args = _train_args(faces, "cuda")
    plain = tmp_path / "plain"
    r = cli(plain, *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    tr = tmp_path / "torchrun"
    env = dict(os.environ, NVIDIA_TF32_OVERRIDE="0")  # the plain run has TF32 off (fixture); so must this one
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "lrfr_cli",
                        "-w", str(tr), "--json", *args], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    start = _start_weights(cli, tmp_path, args)
    a, b = _weights(tr, "d"), _weights(plain, "d")
    moved = sum(float((b[k].double() - start[k].double()).norm()) ** 2 for k in b if b[k].is_floating_point()) ** 0.5
    assert moved > 1.0, "the runs must move the weights, or comparing their updates proves nothing"
    _assert_same_updates(a, b, start, steps=4)
    _assert_same_losses([m["loss"] for m in _metrics(tr, "d")], [m["loss"] for m in _metrics(plain, "d")], scale=64.0)


_NCCL_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
from pathlib import Path
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
from lrfr_cli.data.datasets import open_dataset, resolve_training_data
from lrfr_cli.engine.distributed import DistInfo
from lrfr_cli.engine.loop import LoopConfig, fit
from lrfr_cli.engine.tasks import ClassifierTask
from lrfr_cli.engine.seed import seed_everything
from lrfr_cli.losses import build_head
from lrfr_cli.models import build_backbone

class OneRankDDP(DistInfo):
    # lrfr wraps DDP only for WORLD_SIZE > 1; a one-GPU machine cannot host two nccl ranks, so the
    # DDP + nccl path is taken here with one rank (gradient bucketing, nccl all-reduces, device_ids).
    @property
    def is_distributed(self):
        return True

faces, out = Path(sys.argv[1]), Path(sys.argv[2])
dev = torch.device("cuda", 0)
ds = open_dataset(resolve_training_data(faces, None, out))
cfg = LoopConfig(global_batch=4, max_steps=4, lr=0.01, log_every=1, workers=0)

def task():
    seed_everything(0)
    return ClassifierTask(build_backbone("sphere20", 64), build_head("cosface", 64, 3))

def weights(t):
    return {**{"model." + k: v.detach().cpu() for k, v in t.model.state_dict().items()},
            **{"head." + k: v.detach().cpu() for k, v in t.head.state_dict().items()}}

t0 = task()
torch.save(weights(t0), out / "start.pt")
fit(t0, ds, cfg, out / "plain", device=dev, info=DistInfo(), config={})
torch.save(weights(t0), out / "plain.pt")
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29517"), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
torch.cuda.set_device(dev)
dist.init_process_group("nccl", device_id=dev)
assert dist.get_backend() == "nccl"
t1 = task()
fit(t1, ds, cfg, out / "ddp", device=dev, info=OneRankDDP(0, 1, 0), config={})
torch.save(weights(t1), out / "ddp.pt")
dist.destroy_process_group()
print("ok")
"""


def test_ddp_over_nccl_equals_plain_fit(tmp_path: Path) -> None:
    """The loop's DDP branch on a real nccl process group (one rank: DDP + nccl all-reduces of the
    gradients and of the logged loss) ends where the plain loop ends, up to REL of the update."""
    faces = make_identity_faces(tmp_path / "faces", identities=3, per=4, seed=1, noise=25.0)
    script = tmp_path / "nccl_fit.py"
    script.write_text(_NCCL_SCRIPT)
    p = subprocess.run([sys.executable, str(script), str(faces), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "ok" in p.stdout, (p.stdout + p.stderr)[-3000:]
    start, plain, ddp = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("start", "plain", "ddp"))
    moved = sum(float((plain[k].double() - start[k].double()).norm()) ** 2 for k in plain if plain[k].is_floating_point()) ** 0.5
    assert moved > 1.0
    worst = _assert_same_updates(ddp, plain, start, steps=4)
    assert worst <= REL


# --------------------------------------------------------------------------- device moves
def test_checkpoint_saved_on_gpu_resumes_on_cpu_and_back(cli, tmp_path: Path, no_tf32: None) -> None:
    """4 steps on the GPU, 4 more resumed on the CPU, 4 more resumed on the GPU end where 12
    uninterrupted GPU steps end. ``--schedule constant`` makes the learning rate independent of
    the planned total, so a longer --max-steps continues the same run. The bound is 10x the
    same-device REL: fp32 kernels of two devices reorder sums as two process layouts do, and a
    lost momentum, a skipped or repeated batch or a wrong step count moves the weights by the
    order of the update itself (a failure mode 100x larger than the bound)."""
    faces = make_identity_faces(tmp_path / "faces", identities=3, per=8, seed=1, noise=25.0)
    base = ["train", "--data", str(faces), "--backbone", "tiny", "--embedding-size", "64", "--loss", "arcface",
            "--batch-size", "4", "--workers", "0", "--lr", "0.05", "--schedule", "constant", "--log-every", "1", "--run", "r"]
    ref, ws = tmp_path / "ref", tmp_path / "ws"
    r = cli(ref, *base, "--max-steps", "12", "--device", "cuda", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    r = cli(ws, *base, "--max-steps", "4", "--device", "cuda", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    ck = load_checkpoint(ws / "runs" / "r" / "checkpoints" / "last.pt")  # a GPU-saved checkpoint reads on the CPU
    assert ck["step"] == 4 and all(v.device.type == "cpu" for v in ck["model"].values())
    for device, steps, resumed in (("cpu", 8, 4), ("cuda", 12, 8)):
        r = cli(ws, *base, "--max-steps", str(steps), "--device", device, "--resume", "--force", "--json")
        assert r.exit_code == 0, f"resume on {device}: " + r.stdout + r.stderr
        assert r.json()["resumed_from"] == resumed and r.json()["steps"] == steps
    assert [m["step"] for m in _metrics(ws, "r")] == list(range(1, 13))
    start = _start_weights(cli, tmp_path, [*base, "--max-steps", "12", "--device", "cuda"])
    a, b = _weights(ws, "r"), _weights(ref, "r")
    moved = sum(float((b[k].double() - start[k].double()).norm()) ** 2 for k in b if b[k].is_floating_point()) ** 0.5
    assert moved > 0.1, "the runs must move the weights, or comparing their updates proves nothing"
    _assert_same_updates(a, b, start, steps=12, rel=10 * REL)


# --------------------------------------------------------------------------- eval
def _ten_fold_devtest(data_dir: Path, dst: Path) -> Path:
    """pairsDevTest.txt (500 same, then 500 different) as 10 folds of 50 + 50 in pairs.txt format,
    so one flipped pair moves an accuracy by 0.1 point and no pairsDevTrain images are needed."""
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()[1:]
    same, diff = lines[:500], lines[500:]
    body = [ln for f in range(10) for ln in same[50 * f : 50 * (f + 1)] + diff[50 * f : 50 * (f + 1)]]
    dst.write_text("10\t50\n" + "\n".join(body) + "\n")
    return dst


def _npz_embeddings(ws: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for f in (ws / "embeddings").rglob("*.npz"):
        z = np.load(f)
        out[f.name] = dict(zip(z["keys"].tolist(), z["emb"].astype(np.float64)))
    return out


def test_eval_on_gpu_equals_eval_on_cpu(cli, data_dir: Path, trained_model, tmp_path: Path) -> None:
    """The same trained model and pairs scored with --device cuda and --device cpu (fp32, fresh
    workspaces, so nothing is shared through the embedding cache): every embedding's cosine to its
    CPU twin >= 0.999 and the accuracies within 0.1 point at each size."""
    src_ws, run = trained_model
    pairs = _ten_fold_devtest(data_dir, tmp_path / "devtest_10fold.txt")
    docs, embs = {}, {}
    for device in ("cpu", "cuda"):
        ws = tmp_path / f"ws-{device}"
        shutil.copytree(src_ws / "runs" / run, ws / "runs" / run)
        r = cli(ws, "eval", "--dataset", "lfw", "--model", run, "--data", data_dir / "lfw", "--pairs", pairs, "--align", "center-crop",
                "--sizes", "16,112", "--device", device, "--workers", "2", "--json")
        assert r.exit_code == 0, r.stdout + r.stderr
        docs[device], embs[device] = r.json(), _npz_embeddings(ws)
    assert embs["cpu"].keys() == embs["cuda"].keys() and embs["cpu"]
    for name, cpu in embs["cpu"].items():
        gpu = embs["cuda"][name]
        assert cpu.keys() == gpu.keys()
        a = np.stack([cpu[k] for k in cpu])
        b = np.stack([gpu[k] for k in cpu])
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() >= 0.999, f"{name}: min cosine {cos.min():.6f} over {len(cos)} images"
    res_cpu, res_gpu = docs["cpu"]["results"], docs["cuda"]["results"]
    assert res_cpu.keys() == res_gpu.keys() == {"16", "112"}
    for size in res_cpu:
        assert abs(res_cpu[size]["accuracy"] - res_gpu[size]["accuracy"]) <= 0.001 + 1e-9, (size, res_cpu[size], res_gpu[size])


# --------------------------------------------------------------------------- align
def test_align_on_gpu_gives_the_cpu_landmarks(cli, data_dir: Path, tmp_path: Path) -> None:
    """MTCNN on the GPU and on the CPU over the same real photos (four portraits and the six-face
    group photo): the same faces, each of the 5 landmarks within 0.5 px."""
    photos = tmp_path / "photos" / "x"
    photos.mkdir(parents=True)
    for name in ("angelina_jolie.jpg", "kate_siegel.jpg", "paul_rudd.jpg", "shea_whigham.jpg", "multiface.jpg"):
        shutil.copy(data_dir / RAW / name, photos / name)
    rows = {}
    for device in ("cpu", "cuda"):
        ws = tmp_path / f"ws-{device}"
        r = cli(ws, "align", photos.parent, "--out", "raw", "--select", "all", "--workers", "1", "--device", device, "--json")
        assert r.exit_code == 0, r.stdout + r.stderr
        with open(ws / "aligned" / "raw" / "landmarks.csv", newline="") as fh:
            rows[device] = {row["path"]: row for row in csv.DictReader(fh)}
    assert rows["cpu"].keys() == rows["cuda"].keys() and len(rows["cpu"]) == 10, sorted(rows["cuda"])
    cols = [f"{c}{i}" for i in range(1, 6) for c in "xy"]
    worst = max(abs(float(rows["cpu"][p][c]) - float(rows["cuda"][p][c])) for p in rows["cpu"] for c in cols)
    assert worst <= 0.5, f"landmarks differ by up to {worst:.3f} px"
