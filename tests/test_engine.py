"""Engine: device/precision validation, atomic checkpoints with weights_only loading, seeding,
and a real 2-process DDP (gloo) run through torchrun."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lrfr_cli.engine import autocast, grad_scaler, load_checkpoint, resolve_device, resolve_precision, save_checkpoint, seed_everything
from lrfr_cli.engine.seed import rng_state, set_rng_state
from lrfr_cli.errors import LrfrError


def test_device_and_precision_validation():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "gpu0"):
        with pytest.raises(LrfrError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(LrfrError, match="CUDA is not available"):
            resolve_device("cuda:0")
    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(LrfrError):
        resolve_precision("fp16", cpu)
    with pytest.raises(LrfrError):
        resolve_precision("int8", cpu)
    with autocast(cpu, "bf16"):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    assert not grad_scaler(cpu, "bf16").is_enabled()


def test_checkpoint_roundtrip_and_refusals(tmp_path):
    model = torch.nn.Linear(3, 2)
    seed_everything(3)
    state = {"model": model.state_dict(), "step": 7, "rng": rng_state(), "config": {"backbone": "x"}}
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["weight"], model.weight)
    # RNG state survives weights_only loading and reproduces the stream
    a = (torch.rand(3), np.random.rand(3))
    set_rng_state(loaded["rng"])
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp left behind

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(LrfrError, match="corrupt"):
        load_checkpoint(corrupt)

    class Evil:
        def __reduce__(self):  # noqa: D105
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(LrfrError, match="weights_only"):
        load_checkpoint(evil)
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(LrfrError):
        load_checkpoint(plain_pickle)
    with pytest.raises(LrfrError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    from lrfr_cli.engine import init_distributed, resolve_device
    from lrfr_cli.engine.distributed import all_reduce_mean, barrier, cleanup
    from lrfr_cli.workspace import atomic_write_json

    out = sys.argv[1]
    info = init_distributed(resolve_device("cpu"))
    mean = all_reduce_mean(torch.tensor([float(info.rank), 10.0 * (info.rank + 1)]))
    if info.is_main:
        atomic_write_json(os.path.join(out, "result.json"),
                          {"world": info.world_size, "mean": mean.tolist(), "backend": torch.distributed.get_backend()})
    # every rank records that it ran (in its own file) so the test can see both processes
    open(os.path.join(out, f"rank{info.rank}.seen"), "w").write(str(os.getpid()))
    barrier()
    cleanup()
    """
)


@pytest.mark.slow
def test_ddp_two_process_gloo(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result == {"world": 2, "mean": [0.5, 15.0], "backend": "gloo"}
    seen = sorted(p.name for p in out.glob("*.seen"))
    assert seen == ["rank0.seen", "rank1.seen"]
    pids = {(out / s).read_text() for s in seen}
    assert len(pids) == 2  # two real processes
    assert sorted(p.name for p in out.iterdir()) == ["rank0.seen", "rank1.seen", "result.json"]  # rank-0-only write
