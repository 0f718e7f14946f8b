"""The training seam: tasks see the raw batch, log named terms, name their validation metric,
give parameter groups; per-step generators make resume exact with on-device randomness (CRB);
the sampler is a choice; losses declare their options."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrfr_cli.data.batch_fields import CrossResolutionBatches
from lrfr_cli.data.samplers import PKBatchSampler, build_sampler
from lrfr_cli.engine import load_checkpoint
from lrfr_cli.engine.distributed import DistInfo
from lrfr_cli.engine.loop import LoopConfig, fit
from lrfr_cli.engine.seed import step_seed
from lrfr_cli.engine.tasks import ClassifierTask, StepContext, StepOutput, Task
from lrfr_cli.engine.validation import Validation
from lrfr_cli.errors import LrfrError
from lrfr_cli.losses import (
    LOSSES,
    CosFaceHead,
    build_head,
    describe_losses,
)

from helpers import kill_at_step
from synthetic import make_identity_faces

CPU = torch.device("cpu")
ONE = DistInfo()


class Faces(torch.utils.data.Dataset):
    """In-memory uint8 faces (3×S×S) with labels; code = 2·index + flip, as the real datasets."""

    def __init__(self, n: int = 24, classes: int = 4, size: int = 32, seed: int = 0) -> None:
        g = np.random.default_rng(seed)
        base = g.integers(0, 256, (classes, 3, size, size))
        self.labels = np.arange(n) % classes
        self.images = np.clip(base[self.labels] + g.normal(0, 30, (n, 3, size, size)), 0, 255).astype(np.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, code: int):
        i, flip = divmod(int(code), 2)
        img = self.images[i][:, :, ::-1] if flip else self.images[i]
        return torch.from_numpy(np.ascontiguousarray(img)), int(self.labels[i])


class SmallNet(nn.Module):
    def __init__(self, size: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * (size // 2) ** 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.bn(self.conv(x))), 1))


def _cfg(**kw) -> LoopConfig:
    base = {"global_batch": 8, "max_steps": 6, "lr": 0.05, "schedule": "constant", "checkpoint_every": 2, "log_every": 1, "workers": 0, "seed": 3}
    return LoopConfig(**{**base, **kw})


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- generator
def test_step_seed_is_sha256_of_seed_step_rank_and_drives_the_generator():
    digest = hashlib.sha256(b"lrfr-step:7:12:1").digest()
    assert step_seed(7, 12, 1) == int.from_bytes(digest[:8], "little") & (2**63 - 1)
    seeds = {step_seed(s, st, r) for s in (0, 1) for st in (0, 1, 2) for r in (0, 1)}
    assert len(seeds) == 12  # every (seed, step, rank) its own stream
    ctx = StepContext(step=12, epoch=0, seed=7, device=CPU, rank=1)
    expect = torch.randn(5, generator=torch.Generator().manual_seed(step_seed(7, 12, 1)))
    assert torch.equal(torch.randn(5, generator=ctx.generator), expect)


# --------------------------------------------------------------------------- a task that is not a classifier
class PairDataset(torch.utils.data.Dataset):
    """Items are dicts: two images and whether they show the same identity."""

    def __init__(self, faces: Faces) -> None:
        self.faces = faces
        n = len(faces)
        self.pairs = [(i, (i + 4) % n) for i in range(n)] + [(i, (i + 1) % n) for i in range(n)]  # 4 classes: +4 same, +1 other
        self.same = np.array([faces.labels[a] == faces.labels[b] for a, b in self.pairs], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, code: int) -> dict:
        i = int(code) // 2
        a, b = self.pairs[i]
        return {"a": self.faces[2 * a][0], "b": self.faces[2 * b][0], "same": torch.tensor(self.same[i])}


class ContrastiveTask(Task):
    """Siamese contrastive loss on pairs: proves the loop needs no classifier, labels or head."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallNet()
        self.seen: list[tuple[torch.dtype, tuple[str, ...]]] = []

    def forward(self, batch, ctx: StepContext) -> StepOutput:
        self.seen.append((batch["a"].dtype, tuple(sorted(batch))))
        ea = F.normalize(self.net(ctx.prepare(batch["a"])), dim=1)
        eb = F.normalize(self.net(ctx.prepare(batch["b"])), dim=1)
        d = (ea - eb).pow(2).sum(1)
        same = batch["same"]
        pos = (same * d).mean()
        neg = ((1 - same) * F.relu(1.0 - d)).mean()
        return StepOutput(pos + neg, {"pos": pos, "neg": neg})

    def checkpoint_modules(self):
        return {"net": self.net}


def test_fit_runs_a_pairs_task_with_named_terms_and_its_own_metric(tmp_path):
    ds = PairDataset(Faces())
    torch.manual_seed(0)
    task = ContrastiveTask()
    scores = iter([0.5, 0.2, 0.4])  # lower is better: epoch 1 wins
    val = Validation(lambda t: {"val_loss": next(scores)}, metric="val_loss", higher_is_better=False)
    res = fit(task, ds, _cfg(epochs=3, max_steps=None, global_batch=16), tmp_path, device=CPU, info=ONE, config={"kind": "pairs"}, validation=val)
    per_epoch = len(ds) // 16
    assert res.step == 3 * per_epoch and res.best["val_loss"] == 0.2 and res.best["metric"] == "val_loss"
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == 2 * per_epoch
    # The task got the raw uint8 images and every extra field of the dict batch.
    assert set(task.seen) == {(torch.uint8, ("a", "b", "same"))}
    rows = [r for r in _metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, res.step + 1))
    for r in rows:  # the logged loss is the sum of the logged terms (logging really carries the terms)
        assert r["loss"] == pytest.approx(r["pos"] + r["neg"], rel=1e-6, abs=1e-7)
    assert sum(r["neg"] > 0 for r in rows) > 0 and sum(r["pos"] > 0 for r in rows) > 0
    vals = [r["val_loss"] for r in _metrics(tmp_path) if "val_loss" in r]
    assert vals == [0.5, 0.2, 0.4]


def test_reserved_term_names_are_refused(tmp_path):
    class Bad(ContrastiveTask):
        def forward(self, batch, ctx):
            out = super().forward(batch, ctx)
            return StepOutput(out.loss, {"lr": out.loss})

    with pytest.raises(ValueError, match="reserved"):
        fit(Bad(), PairDataset(Faces()), _cfg(max_steps=1, global_batch=16), tmp_path, device=CPU, info=ONE, config={})


# --------------------------------------------------------------------------- parameter groups
def test_frozen_backbone_and_head_lr_scale_match_a_hand_sgd_step(tmp_path):
    ds = Faces(n=16)
    torch.manual_seed(0)
    model, head = SmallNet(), build_head("cosface", 16, 4)
    task = ClassifierTask(model, head, freeze_backbone=True, head_lr_scale=10.0)
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    w0 = head.weight.detach().clone()
    # The hand computation: the whole set is one batch (flip off), the frozen backbone is in eval
    # mode, so the mean loss is order-free; plain SGD: w1 = w0 - (10·lr)·grad.
    x = ((torch.from_numpy(ds.images).float() / 255) - 0.5) / 0.5
    ref_head = build_head("cosface", 16, 4)
    ref_head.weight.data.copy_(w0)
    model.eval()
    loss = ref_head.loss(model(x), torch.from_numpy(ds.labels))
    (grad,) = torch.autograd.grad(loss, ref_head.weight)
    cfg = _cfg(global_batch=16, max_steps=1, momentum=0.0, weight_decay=0.0, flip=False, lr=0.01)
    fit(task, ds, cfg, tmp_path, device=CPU, info=ONE, config={})
    torch.testing.assert_close(head.weight.detach(), w0 - 0.1 * grad, rtol=1e-5, atol=1e-7)
    for k, v in model.state_dict().items():  # weights and BatchNorm statistics untouched
        assert torch.equal(v, before_model[k]), k
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    # one group: the head's weight (the backbone is out of the optimiser), at 10 × the schedule's lr
    assert [(g["lr"], g["lr_scale"]) for g in ck["optimizer"]["param_groups"]] == [(pytest.approx(0.1), 10.0)]


# --------------------------------------------------------------------------- batch fields for heads
class RecordingHead(CosFaceHead):
    needs = ("is_lr", "quality")

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.got: list[dict] = []

    def margins(self, embeddings, labels, margin, **fields):
        self.got.append({k: v.detach().clone() for k, v in fields.items()})
        return super().margins(embeddings, labels, margin)

    def stats(self):
        return {"margin_mean": torch.tensor(self.m)}


def _cv2_quality(img_chw: np.ndarray) -> float:
    rgb = img_chw.transpose(1, 2, 0)
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def test_classifier_task_hands_the_head_is_lr_and_quality_of_the_crb_batch():
    torch.manual_seed(0)
    head = RecordingHead(16, 4)
    task = ClassifierTask(SmallNet(), head, transforms=[CrossResolutionBatches([8, 16], mode="copies")])
    ds = Faces(n=8)
    images = torch.stack([ds[2 * i][0] for i in range(6)])
    batch = {"images": images, "labels": torch.from_numpy(ds.labels[:6])}
    out = task(batch, StepContext(step=0, epoch=0, seed=0, device=CPU))
    got = head.got[-1]
    assert got["is_lr"].tolist() == [False] * 6 + [True] * 6
    assert {k: float(v) for k, v in out.terms.items()} == {"margin_mean": pytest.approx(0.35)}
    # quality is measured on the images the network saw: HR rows are the originals (OpenCV check;
    # fp32 variance of ~1e3 responses of up to ~1e3 grey levels: ~1e-4 relative rounding)
    np.testing.assert_allclose(got["quality"][:6].numpy(), [_cv2_quality(im) for im in images.numpy()], rtol=1e-3)
    assert (got["quality"][6:] < got["quality"][:6]).all()  # LR copies are blurrier


def test_a_field_nobody_provides_is_a_clear_error():
    class Needy(CosFaceHead):
        needs = ("is_lr",)

    task = ClassifierTask(SmallNet(), Needy(16, 4))
    batch = {"images": torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "labels": torch.tensor([0, 1])}
    with pytest.raises(LrfrError, match="is_lr.*Cross-Resolution"):
        task(batch, StepContext(step=0, epoch=0, seed=0, device=CPU))


# --------------------------------------------------------------------------- exact resume with CRB
class Interrupt(Exception):
    pass


def _crb_task(loss: str = "arcface") -> ClassifierTask:
    torch.manual_seed(0)
    return ClassifierTask(SmallNet(), build_head(loss, 16, 4), transforms=[CrossResolutionBatches([8, 12, 16], mode="split", lr_prob=0.5)])


# approach2: the margin comes from the Laplacian quality of the CRB-mixed batch, so a resumed run
# must rebuild exactly the same LR rows for its margins (and so its losses) to match.
@pytest.mark.parametrize("loss", ["arcface", "approach2"])
def test_interrupted_and_resumed_crb_run_is_bit_identical(tmp_path, loss):
    ds, cfg = Faces(n=24), _cfg(max_steps=9, checkpoint_every=2)
    ref = _crb_task(loss)
    fit(ref, ds, cfg, tmp_path / "ref", device=CPU, info=ONE, config={})

    calls = {"n": 0}

    def crash_after_5(advance=1, total=None, **info):
        calls["n"] += advance if total is None else 0
        if calls["n"] >= 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(_crb_task(loss), ds, cfg, tmp_path / "run", device=CPU, info=ONE, config={}, progress=crash_after_5)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4
    torch.manual_seed(12345)  # the global RNG of the new process differs; the checkpoint restores it
    resumed = _crb_task(loss)
    res = fit(resumed, ds, cfg, tmp_path / "run", device=CPU, info=ONE, config={}, resume=True)
    assert res.resumed_from == 4 and res.step == 9
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    ref_losses = [r["loss"] for r in _metrics(tmp_path / "ref")]
    assert [r["loss"] for r in _metrics(tmp_path / "run")] == ref_losses
    # every logged term too (approach2's mean quality and margin of the mixed batch)
    def logged(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in _metrics(run)]

    assert logged(tmp_path / "run") == logged(tmp_path / "ref")
    assert loss != "approach2" or "margin_mean" in logged(tmp_path / "ref")[0]
    # ...and the randomness is real: other seeds give other LR rows, so other losses.
    other = _crb_task(loss)
    fit(other, ds, _cfg(max_steps=9, checkpoint_every=2, seed=4), tmp_path / "other", device=CPU, info=ONE, config={})
    assert [r["loss"] for r in _metrics(tmp_path / "other")] != ref_losses


@pytest.mark.slow
def test_sigkill_then_resume_with_crb_equals_uninterrupted(cli, tmp_path):
    faces = make_identity_faces(tmp_path / "faces", 3, 8, seed=1, noise=25.0)
    args = ["train", "--data", str(faces), "--backbone", "tiny", "--embedding-size", "32", "--loss", "arcface",
            "--crb", "--lr-sizes", "8,16,24", "--crb-mode", "split", "--lr-prob", "0.5",
            "--batch-size", "4", "--max-steps", "30", "--checkpoint-every", "4", "--log-every", "1", "--workers", "0",
            "--device", "cpu", "--threads", "1", "--lr", "0.05", "--run", "r"]
    ref_ws, ws = tmp_path / "ref", tmp_path / "ws"
    r = cli(ref_ws, *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    kill_at_step(ws, args, 9)
    r = cli(ws, *args, "--resume", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    a = load_checkpoint(ws / "runs" / "r" / "checkpoints" / "last.pt")
    b = load_checkpoint(ref_ws / "runs" / "r" / "checkpoints" / "last.pt")
    for part in ("model", "head"):
        for k in b[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    assert json.loads((ws / "runs" / "r" / "config.json").read_text())["crb"] == {
        "enabled": True, "why": "--crb", "sizes": [8, 16, 24], "mode": "split", "lr_prob": 0.5}


# --------------------------------------------------------------------------- samplers
def test_pk_sampler_gives_p_identities_times_k_images_sharded_by_rank():
    labels = np.repeat(np.arange(10), [5, 5, 4, 3, 2, 6, 1, 5, 5, 4])  # identity 6 has one image: never drawn
    s = PKBatchSampler(labels, global_batch=8, seed=1, epoch=2, k=2)
    batches = list(s)
    assert len(batches) == len(labels) // 8
    for b in batches:
        idx = np.asarray(b) // 2
        counts = collections.Counter(labels[idx].tolist())
        assert len(counts) == 4 and set(counts.values()) == {2} and 6 not in counts
        for ident in counts:  # an identity with >= K images never repeats one
            mine = idx[labels[idx] == ident]
            assert len(set(mine.tolist())) == 2
    again = list(PKBatchSampler(labels, 8, seed=1, epoch=2, k=2))
    assert again == batches and list(PKBatchSampler(labels, 8, seed=1, epoch=3, k=2)) != batches
    shards = [list(PKBatchSampler(labels, 8, seed=1, epoch=2, rank=r, world_size=2, k=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*shards)] == batches
    assert list(PKBatchSampler(labels, 8, seed=1, epoch=2, k=2, start=2)) == batches[2:]
    with pytest.raises(LrfrError, match="multiple of 3"):
        PKBatchSampler(labels, 8, seed=1, k=3)
    with pytest.raises(LrfrError, match="identities"):
        PKBatchSampler(labels, 40, seed=1, k=2)
    assert list(build_sampler("pk", labels, 8, 1, 2, k=2)) == batches
    with pytest.raises(LrfrError, match="epoch, pk"):
        build_sampler("nope", labels, 8, 1, 0)


def test_fit_with_the_pk_sampler(tmp_path):
    ds = Faces(n=24)
    torch.manual_seed(0)
    task = ClassifierTask(SmallNet(), build_head("softmax", 16, 4))
    res = fit(task, ds, _cfg(sampler="pk", images_per_identity=2, max_steps=None, epochs=1), tmp_path, device=CPU, info=ONE, config={})
    assert res.step == 24 // 8
    assert _cfg(sampler="pk").identity()["images_per_identity"] == 4 and "images_per_identity" not in _cfg().identity()


# --------------------------------------------------------------------------- losses: options and help
def test_loss_options_are_typed_checked_and_listed(monkeypatch):
    assert LOSSES.parse_options("sphereface", ["m=3", "lambda_min=2"]) == {"m": 3.0, "lambda_min": 2.0}
    with pytest.raises(LrfrError, match="no option 'q'.*s=64"):
        LOSSES.parse_options("cosface", ["q=1"])
    with pytest.raises(LrfrError, match="float"):
        LOSSES.parse_options("cosface", ["m=big"])
    with pytest.raises(LrfrError, match="KEY=VALUE"):
        LOSSES.parse_options("cosface", ["m"])
    with pytest.raises(LrfrError, match="softmax has no option m"):
        build_head("softmax", 4, 2, m=0.3)

    class Toy(CosFaceHead):
        """A new loss with its own option: one class + one registry line."""

        summary = "a toy loss for the registry test"
        options: ClassVar[dict] = {"gamma": (float, 2.0, "how toy it is")}

        def __init__(self, embedding_size, num_classes, s=64.0, m=0.35, gamma=2.0):
            super().__init__(embedding_size, num_classes, s=s, m=m)
            self.gamma = gamma

    monkeypatch.setattr(LOSSES, "_entries", dict(LOSSES._entries))  # the registration below ends with the test
    LOSSES.register("toy", Toy)
    assert build_head("toy", 4, 2, **LOSSES.parse_options("toy", ["gamma=0.5"])).gamma == 0.5
    assert "toy (s=64, m=0.35, gamma=2): a toy loss for the registry test" in describe_losses()


def test_train_help_lists_each_loss_on_one_line(cli, monkeypatch):
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 300)  # a 80-column test terminal would cut option names
    r = cli(None, "train", "--help")
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    for line in describe_losses():
        assert " ".join(line.split()) in text
    for opt in ("--loss-opt", "--allow-outside-root", "--sampler", "--crb", "--lr-sizes", "--crb-mode", "--lr-prob", "--freeze-backbone", "--head-lr-scale"):
        assert opt in text


def test_cli_loss_opt_reaches_config_and_bad_ones_are_one_line_errors(cli, ws, tmp_path):
    faces = make_identity_faces(tmp_path / "faces", 3, 4, seed=0, noise=20.0)
    fast = ["--data", faces, "--backbone", "tiny", "--embedding-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--threads", "1", "--max-steps", "1"]
    r = cli(ws, "train", *fast, "--loss", "cosface", "--loss-opt", "m=0.2", "--scale", "30", "--run", "o", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads((ws / "runs" / "o" / "config.json").read_text())["head"] == {"m": 0.2, "s": 30.0}
    for bad, needle in ((["--loss", "softmax", "--margin", "0.3"], "--margin: loss softmax has no option"),
                        (["--loss", "arcface", "--loss-opt", "x=1"], "no option 'x'"),
                        (["--crb", "--lr-sizes", "8,200"], "below the input height"),
                        (["--crb", "--crb-mode", "mix"], "--crb-mode"),
                        (["--sampler", "pk", "--images-per-identity", "3"], "multiple of 3")):
        r = cli(ws, "train", *fast, *bad)
        assert r.exit_code != 0 and needle in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr, (bad, r.stdout)


def test_allow_outside_root_reaches_the_data_layer(cli, ws, tmp_path):
    make_identity_faces(tmp_path / "outside", 2, 4, seed=0, noise=20.0)
    root = tmp_path / "root"
    root.mkdir()
    lst = tmp_path / "l.txt"
    lst.write_text("".join(f"../outside/id{i:02d}/{j}.png {i}\n" for i in range(2) for j in range(4)))
    fast = ["--data", lst, "--data-root", root, "--backbone", "tiny", "--embedding-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--threads", "1", "--max-steps", "1"]
    r = cli(ws, "train", *fast, "--run", "no")
    assert r.exit_code != 0 and "outside" in r.stdout + r.stderr
    r = cli(ws, "train", *fast, "--allow-outside-root", "--run", "yes", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.json()["images"] == 8
