"""The sharded margin classifier (issue 14) against the unsharded head computed in one process.

The 2-process tests run the sharded classifier under real gloo process groups (``mp.spawn``)
with the backbone under DDP, as training does, and compare with the unsharded head applied to
the concatenated batch in the parent process: loss, backbone gradients, the shard's weight
gradient (its rows of the full gradient), AdaFace's EMA, the sampled softmax, the gathered
matrix, optimiser momentum and a 1-process resume from the 2-process checkpoint.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lrfr_cli.errors import LrfrError
from lrfr_cli.losses import build_head
from lrfr_cli.losses.adaface import AdaFaceHead
from lrfr_cli.losses.approach import Approach1Head, Approach2Head
from lrfr_cli.losses.sharded import (
    ShardedClassifier,
    build_sharded,
    class_range,
    clip_grad_norm_,
    gather_optimizer_state,
    mark_ddp_ignored,
    shard_optimizer_state,
)

EPS = float(torch.finfo(torch.float32).eps)
D_IN, D, B = 12, 8, 6  # backbone input, embedding size, batch per rank
HEADS = ("arcface", "cosface", "adaface", "approach1")


def _tol(ref: torch.Tensor, terms: int, scale: float = 64.0) -> float:
    """fp32 rounding bound for a value summed from ``terms`` products whose inputs went through
    ``s``-scaled logits (relative error ≈ s·eps in each softmax probability), plus a floor."""
    return terms * scale * EPS * max(float(ref.abs().max()), 1e-3)


def _problem(num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * B, D_IN, generator=g)
    x[:B] *= 3.0  # rank 0's half has larger norms: AdaFace's ẑ differs between the halves
    labels = torch.randint(0, num_classes, (2 * B,), generator=g)
    labels[0] = num_classes - 1  # the last class (rank 1's range) and the first are targets
    labels[1] = 0
    return {"x": x, "labels": labels, "is_lr": torch.arange(2 * B) % 3 == 0, "bb": torch.randn(D, D_IN, generator=g) * 0.5}


def _head(name: str, num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    classes = {"adaface": lambda: AdaFaceHead(D, num_classes, t_alpha=0.5), "approach1": lambda: Approach1Head(D, num_classes),
               "approach2": lambda: Approach2Head(D, num_classes)}
    h = classes[name]() if name in classes else build_head(name, D, num_classes)
    with torch.no_grad():
        h.weight.normal_()  # unit-scale weights: cosines spread over [-1, 1]
    return h


def _fields(name: str, p: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    return {"is_lr": p["is_lr"][rows]} if name == "approach1" else {}


# ----------------------------------------------------------------------------------- one process
def test_class_ranges_are_array_split():
    for c, w in [(10, 2), (41, 2), (100_003, 8), (7, 3)]:
        parts = np.array_split(np.arange(c), w)
        assert [class_range(c, r, w) for r in range(w)] == [(int(p[0]), int(p[-1]) + 1) for p in parts]


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface", "adaface", "approach1", "approach2"])
def test_one_process_equals_the_head(name):
    """World size 1, sample rate 1: the wrapped head's own logits, loss and gradients."""
    c = 9
    ref = _head(name, c, 3)
    sc = ShardedClassifier(_head(name, c, 3), c)
    g = torch.Generator().manual_seed(1)
    emb = (torch.randn(B, D, generator=g) * 4).requires_grad_()
    labels = torch.randint(0, c, (B,), generator=g)
    fields = {"is_lr": torch.arange(B) % 2 == 0} if name == "approach1" else {}
    if name == "approach2":
        fields = {"images": torch.randint(0, 256, (B, 3, 16, 16), generator=g, dtype=torch.uint8)}
    l_ref = ref.loss(emb, labels, **fields)
    (g_ref,) = torch.autograd.grad(l_ref, emb)
    l_ref = l_ref.detach()
    l_sh = sc.loss(emb, labels, **fields)
    (g_sh,) = torch.autograd.grad(l_sh, emb)
    l_sh = l_sh.detach()
    assert float(l_sh) == pytest.approx(float(l_ref), abs=_tol(l_ref, 4 * c))
    torch.testing.assert_close(g_sh, g_ref, rtol=0, atol=_tol(g_ref, 4 * c))
    torch.testing.assert_close(sc(emb, labels, **fields), ref(emb, labels, **fields), rtol=0, atol=64 * 4 * EPS)
    assert sc.stats().keys() == ref.stats().keys() if hasattr(ref, "stats") else True


def test_softmax_and_bad_options_are_one_line_errors():
    with pytest.raises(LrfrError, match="not a normalised margin head"):
        ShardedClassifier(build_head("softmax", D, 10), 10)
    with pytest.raises(LrfrError, match="sample-rate"):
        ShardedClassifier(build_head("arcface", D, 10), 10, sample_rate=0.0)
    sc = ShardedClassifier(build_head("arcface", D, 10), 10)
    with pytest.raises(LrfrError, match="outside 0..num_classes-1"):
        sc.loss(torch.randn(2, D), torch.tensor([0, 10]))
    with pytest.raises(LrfrError, match="needs 10 classes"):
        sc.load_state_dict({"weight": torch.zeros(11, D)})


def test_sampling_keeps_every_target_and_the_requested_share():
    c = 40
    sc = ShardedClassifier(_head("arcface", c, 0), c, sample_rate=0.25).train()
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, c, (6,), generator=g)
        sc.loss(torch.randn(6, D, generator=g), labels, generator=g)
        idx = sc.last_index
        assert set(labels.tolist()) <= set(idx.tolist())
        assert len(idx) == max(int(0.25 * c), len(set(labels.tolist())))
        assert torch.equal(idx, torch.unique(idx))  # sorted, no repeats
    sc.eval()
    sc.loss(torch.randn(3, D), torch.tensor([1, 2, 3]))
    assert sc.last_index is None  # evaluation uses every class


# ----------------------------------------------------------------------------------- two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Net(nn.Module):
    """Backbone + head with the loss computed inside forward, as the training task does under DDP."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = backbone, head

    def forward(self, x: torch.Tensor, labels: torch.Tensor, fields: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model(x)
        emb.retain_grad()
        return self.head.loss(emb, labels, **fields), emb


def _worker(rank: int, world: int, port: int, c: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        p = _problem(c)
        rows = slice(rank * B, (rank + 1) * B)
        res: dict[str, object] = {}
        for name in HEADS:
            full = _head(name, c, 7)
            sc = ShardedClassifier(full, c)  # slices its range from the full matrix
            backbone = nn.Linear(D_IN, D, bias=False)
            with torch.no_grad():
                backbone.weight.copy_(p["bb"])
            net = _Net(backbone, sc)
            ignored = mark_ddp_ignored(net)
            ddp = nn.parallel.DistributedDataParallel(net)
            opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
            loss, emb = ddp(p["x"][rows], p["labels"][rows], _fields(name, p, rows))
            loss.backward()  # DDP averages the backbone gradient; the shard's stays local
            norm = clip_grad_norm_(list(net.parameters()), 1e9, [sc])  # the whole model's norm; no clipping
            opt.step()
            momentum = gather_optimizer_state(opt, [sc])
            sliced = shard_optimizer_state(momentum, opt, [sc]) if rank == 0 else None
            res[name] = {
                "ignored": ignored,
                "loss": loss.detach(),
                "bb_grad": backbone.weight.grad.clone(),
                "emb_grad": emb.grad.clone(),
                "w_grad": sc.weight.grad.clone(),
                "norm": norm,
                "buffers": {k: v.clone() for k, v in sc.head.named_buffers()},
                "momentum": momentum["state"],
                "sliced_ok": None if sliced is None else _sliced_ok(sliced, opt, sc),
            }
        # sample rate < 1: positives kept, loss = softmax over the union of the sampled classes
        sc = ShardedClassifier(_head("cosface", c, 7), c, sample_rate=0.3).train()
        g = torch.Generator().manual_seed(100 + rank)
        emb = p["x"][rows] @ p["bb"].t()
        res["sampled"] = {"loss": sc.loss(emb, p["labels"][rows], generator=g).detach(), "index": sc.last_index + sc.lo}
        # the gathered matrix, its shards, the logits of the whole batch, a checkpoint
        sc = ShardedClassifier(_head("arcface", c, 7), c)
        state = sc.state_dict()
        res["shard"] = sc.weight.detach().clone()
        res["logits"] = sc(p["x"][rows] @ p["bb"].t(), p["labels"][rows]).detach()
        if rank == 0:
            torch.save(state, Path(out_dir) / "head.pt")
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _sliced_ok(state: dict, opt: torch.optim.Optimizer, sc: ShardedClassifier) -> bool:
    mine = opt.state_dict()["state"]
    return all(torch.equal(state["state"][k]["momentum_buffer"], v["momentum_buffer"]) for k, v in mine.items())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[int, list[dict], Path]:
    c = 41  # odd: the shards are 21 and 20 classes (the padded gather path)
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(_worker, args=(2, _free_port(), c, str(out)), nprocs=2, join=True)
    return c, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], out


def _reference(name: str, c: int) -> dict[str, torch.Tensor]:
    p = _problem(c)
    head = _head(name, c, 7)
    backbone = nn.Linear(D_IN, D, bias=False)
    with torch.no_grad():
        backbone.weight.copy_(p["bb"])
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    emb = backbone(p["x"])
    emb.retain_grad()
    loss = head.loss(emb, p["labels"], **_fields(name, p, slice(None)))
    loss.backward()
    opt.step()
    return {"loss": loss.detach(), "bb_grad": backbone.weight.grad, "emb_grad": emb.grad, "w_grad": head.weight.grad,
            "buffers": dict(head.named_buffers()), "momentum": opt.state[head.weight]["momentum_buffer"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", HEADS)
def test_two_ranks_equal_the_unsharded_head(two_ranks, name):
    c, res, _ = two_ranks
    ref = _reference(name, c)
    n_terms = 2 * B * c  # every gradient entry sums over all samples × classes
    for rank, r in enumerate(res):
        got = r[name]
        assert got["ignored"] == ["head.head.weight"]
        assert float(got["loss"]) == pytest.approx(float(ref["loss"]), abs=_tol(ref["loss"], c))
        torch.testing.assert_close(got["bb_grad"], ref["bb_grad"], rtol=0, atol=_tol(ref["bb_grad"], n_terms))
        # the embeddings' gradient is world_size × d(global loss), which DDP's mean turns back into 1×
        rows = slice(rank * B, (rank + 1) * B)
        torch.testing.assert_close(got["emb_grad"], 2 * ref["emb_grad"][rows], rtol=0, atol=_tol(ref["emb_grad"], n_terms))
        lo, hi = class_range(c, rank, 2)
        torch.testing.assert_close(got["w_grad"], ref["w_grad"][lo:hi], rtol=0, atol=_tol(ref["w_grad"], n_terms))
        for k, v in ref["buffers"].items():  # AdaFace: one EMA step of the global batch, on every rank
            torch.testing.assert_close(got["buffers"][k], v, rtol=4 * EPS, atol=0)
        want = torch.sqrt(ref["bb_grad"].square().sum() + ref["w_grad"].square().sum())
        assert float(got["norm"]) == pytest.approx(float(want), abs=_tol(want, n_terms))
    # momentum gathered to the full matrix on rank 0 (after one step = the full gradient + wd 0)
    m0 = next(iter(v["momentum_buffer"] for v in res[0][name]["momentum"].values() if v["momentum_buffer"].shape[0] == c))
    torch.testing.assert_close(m0, ref["momentum"], rtol=0, atol=_tol(ref["momentum"], n_terms))
    assert res[0][name]["sliced_ok"]


@pytest.mark.slow
def test_adaface_statistics_moved(two_ranks):
    """Guard the guard: the EMA comparison above is not between two untouched initial values."""
    _, res, _ = two_ranks
    assert float(res[0]["adaface"]["buffers"]["norm_mean"]) != pytest.approx(20.0, abs=0.5)


@pytest.mark.slow
def test_sampled_softmax_keeps_positives_and_is_the_restricted_softmax(two_ranks):
    c, res, _ = two_ranks
    p = _problem(c)
    index = torch.cat([r["sampled"]["index"] for r in res])
    assert set(p["labels"].tolist()) <= set(index.tolist())
    for rank in range(2):
        lo, hi = class_range(c, rank, 2)
        assert len(res[rank]["sampled"]["index"]) == max(int(0.3 * (hi - lo)), len({y for y in p["labels"].tolist() if lo <= y < hi}))
    # independent: CosFace logits of the whole batch by hand, cross-entropy over the sampled columns
    w = _head("cosface", c, 7).weight.detach()
    cos = F.normalize(p["x"] @ p["bb"].t(), dim=1) @ F.normalize(w, dim=1).t()
    logits = 64.0 * (cos - 0.35 * F.one_hot(p["labels"], c))
    col = torch.searchsorted(index, p["labels"])
    ref = F.cross_entropy(logits[:, index], col)
    for r in res:
        assert float(r["sampled"]["loss"]) == pytest.approx(float(ref), abs=_tol(ref, c))
    full = F.cross_entropy(logits, p["labels"])
    assert abs(float(full) - float(ref)) > 1e-3  # sampling changed the softmax: the check above has teeth


@pytest.mark.slow
def test_checkpoint_holds_the_full_matrix_and_resumes_on_one_process(two_ranks):
    c, res, out = two_ranks
    state = torch.load(out / "head.pt", weights_only=True)
    full = _head("arcface", c, 7).weight.detach()
    assert torch.equal(state["weight"], torch.cat([res[0]["shard"], res[1]["shard"]]))
    assert torch.equal(state["weight"], full)
    assert [r["shard"].shape[0] for r in res] == [21, 20]
    # the 2-rank logits, side by side, are the 1-process logits of the loaded checkpoint
    two = torch.cat([res[0]["logits"], res[1]["logits"]], dim=1)
    p = _problem(c)
    emb = p["x"] @ p["bb"].t()
    plain = build_head("arcface", D, c)
    plain.load_state_dict(state)
    one = ShardedClassifier(build_head("arcface", D, c), c)
    one.load_state_dict(state)
    for head in (plain, one):
        torch.testing.assert_close(head(emb, p["labels"]), two, rtol=0, atol=64 * 8 * EPS)


def test_build_sharded_allocates_only_its_block():
    sc = build_sharded("cosface", D, 10, sample_rate=0.5, m=0.2)
    assert sc.weight.shape == (10, D) and sc.head.m == 0.2 and sc.sample_rate == 0.5
    with pytest.raises(LrfrError, match="no option"):
        build_sharded("cosface", D, 10, bogus=1.0)


# ----------------------------------------------------------------------------------- lrfr train
def _train_args(faces: Path, *extra: str) -> list[str]:
    # sphere20 has no BatchNorm, whose per-process statistics would (correctly) differ between
    # one process and two; the global batch (4 = 2 × 2) and data order are the same.
    return ["train", "--data", str(faces), "--backbone", "sphere20", "--loss", "arcface", "--batch-size", "4",
            "--workers", "0", "--device", "cpu", "--lr", "0.05", "--log-every", "1", "--embedding-size", "16",
            "--threads", "1", "--run-name", "s", "--checkpoint-every", "1", "--schedule", "constant", *extra]


def _ckpt(ws: Path) -> dict:
    from lrfr_cli.engine import load_checkpoint

    return load_checkpoint(ws / "runs" / "s" / "checkpoints" / "last.pt")


def _start(classes: int) -> dict[str, dict[str, torch.Tensor]]:
    """The run's initial weights: the runner seeds, then builds the backbone, then the head."""
    from lrfr_cli.engine.seed import seed_everything
    from lrfr_cli.models import build_backbone

    seed_everything(0)
    model = build_backbone("sphere20", 16)
    return {"model": model.state_dict(), "head": build_head("arcface", 16, classes).state_dict()}


def _assert_same_run(got: dict, ref: dict, start: dict) -> None:
    """Per tensor ‖got − ref‖ ≤ 1e-3·‖ref − start‖ + fp32 rounding of ‖ref‖: equal up to the
    reduction order, relative to how far training moved the tensor (which must be > 0)."""
    for part in ("model", "head"):
        for k, v in ref[part].items():
            if not v.is_floating_point():
                continue
            moved = float((v - start[part][k]).norm())
            assert moved > 0 or part == "model", f"{part}.{k} did not move"
            err = float((got[part][k] - v).norm())
            assert err <= 1e-3 * moved + 64 * EPS * float(v.norm()), f"{part}.{k}: |diff| {err:.3g} vs moved {moved:.3g}"


def test_train_cli_sharded_one_process_equals_full(cli, tmp_path):
    from synthetic import make_identity_faces

    faces = make_identity_faces(tmp_path / "faces", 5, 2, seed=3)
    full, sh = tmp_path / "full", tmp_path / "sh"
    r = cli(full, *_train_args(faces, "--max-steps", "2"))
    assert r.exit_code == 0, r.stdout + r.stderr
    r = cli(sh, *_train_args(faces, "--max-steps", "2", "--classifier", "sharded", "--json"))
    assert r.exit_code == 0, r.stdout + r.stderr
    a, b = _ckpt(full), _ckpt(sh)
    assert b["head"]["weight"].shape == (5, 16) and b["config"]["classifier"] == {"kind": "sharded", "sample_rate": 1.0}
    _assert_same_run(b, a, _start(5))


def test_train_cli_classifier_errors(cli, tmp_path):
    from synthetic import make_identity_faces

    faces = make_identity_faces(tmp_path / "faces", 3, 2, seed=3)
    r = cli(tmp_path / "w", *_train_args(faces, "--max-steps", "1", "--sample-rate", "0.5"))
    assert r.exit_code != 0 and "--sample-rate needs --classifier sharded" in r.stdout + r.stderr
    r = cli(tmp_path / "w", *_train_args(faces, "--max-steps", "1", "--classifier", "sharded", "--loss", "softmax"))
    assert r.exit_code != 0 and "cannot use --classifier sharded" in r.stdout + r.stderr
    r = cli(tmp_path / "w", *_train_args(faces, "--max-steps", "1", "--classifier", "bogus"))
    assert r.exit_code != 0 and "choose one of: full, sharded" in r.stdout + r.stderr
    r = cli(tmp_path / "w", *_train_args(faces, "--max-steps", "1", "--classifier", "sharded", "--sample-rate", "1.5"))
    assert r.exit_code != 0 and "must be in (0, 1]" in r.stdout + r.stderr


@pytest.mark.slow
def test_torchrun_two_ranks_sharded_then_resume_on_one_equals_full(cli, tmp_path):
    """2 steps on 2 sharded ranks, resumed on 1 process to 4 steps = 4 steps of the full classifier."""
    import json
    import subprocess
    import sys

    from synthetic import make_identity_faces

    faces = make_identity_faces(tmp_path / "faces", 5, 2, seed=3)
    full, sh = tmp_path / "full", tmp_path / "sh"
    r = cli(full, *_train_args(faces, "--max-steps", "4"))
    assert r.exit_code == 0, r.stdout + r.stderr
    lrfr = str(Path(sys.executable).parent / "lrfr")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", lrfr, "-w", str(sh), "--json",
                        *_train_args(faces, "--max-steps", "2", "--classifier", "sharded")], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    out = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert out["world_size"] == 2 and out["steps"] == 2
    two = _ckpt(sh)
    assert two["head"]["weight"].shape == (5, 16)  # the full matrix, gathered from shards of 3 and 2
    mom = [v["momentum_buffer"] for v in two["optimizer"]["state"].values() if v["momentum_buffer"].shape == (5, 16)]
    assert len(mom) == 1 and bool((mom[0][3:] != 0).any())  # rank 1's rows of the momentum came along
    r = cli(sh, *_train_args(faces, "--max-steps", "4", "--classifier", "sharded", "--resume", "--force", "--json"))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.json()["resumed_from"] == 2 and r.json()["world_size"] == 1
    _assert_same_run(_ckpt(sh), _ckpt(full), _start(5))
    l1 = [json.loads(ln)["loss"] for ln in (full / "runs" / "s" / "metrics.jsonl").read_text().splitlines()]
    l2 = [json.loads(ln)["loss"] for ln in (sh / "runs" / "s" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(l2, l1, rtol=1e-4)


def test_initial_matrix_does_not_depend_on_the_number_of_ranks(monkeypatch):
    """Beyond INIT_BLOCK classes each rank draws only its blocks; the matrix is the same for 1..3 ranks."""
    import lrfr_cli.losses.sharded as sh

    monkeypatch.setattr(sh, "INIT_BLOCK", 4)
    mats = []
    for world in (1, 2, 3):
        parts = []
        for rank in range(world):
            monkeypatch.setattr(sh, "_rank_world", lambda group=None, r=rank, w=world: (r, w))
            torch.manual_seed(5)
            parts.append(build_sharded("arcface", D, 11).weight.detach())
            after = torch.rand(1)
        mats.append(torch.cat(parts))
        torch.manual_seed(5)
        torch.randint(0, 2**62, (1,))
        assert torch.equal(after, torch.rand(1))  # the global stream advanced by one draw on every rank
    assert mats[0].shape == (11, D) and torch.equal(mats[0], mats[1]) and torch.equal(mats[0], mats[2])
    assert mats[0][:4].std() > 0.005  # the head's own init (std 0.01), not zeros
    monkeypatch.setattr(sh, "_rank_world", lambda group=None: (0, 1))
    torch.manual_seed(5)
    small = build_sharded("arcface", D, 4).weight.detach()  # within one block: the full head's own draw
    torch.manual_seed(5)
    assert torch.equal(small, build_head("arcface", D, 4).weight.detach())


def test_clip_grad_norm_in_one_process_is_torchs():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), ShardedClassifier(build_head("cosface", 4, 6), 6)
    grads = [torch.randn_like(p) for p in (*a.parameters(), *b.parameters())]
    params = [*a.parameters(), *b.parameters()]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    for p, q, g in zip(params, twins, grads):
        p.grad, q.grad = g.clone(), g.clone()
    n1 = clip_grad_norm_(params, 0.5, [b])
    n2 = torch.nn.utils.clip_grad_norm_(twins, 0.5)
    assert float(n1) == pytest.approx(float(n2), rel=1e-6) and float(n2) > 0.5  # it did clip
    for p, q in zip(params, twins):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
