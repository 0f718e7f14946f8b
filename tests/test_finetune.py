"""``lrfr finetune``: each method's loss against brute-force numpy loops, the seed's bugs, the
distillation contract, the command's run contract (parent + sha1, ``eval`` loads it) and bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lrfr_cli.engine.tasks import ClassifierTask, StepContext
from lrfr_cli.finetune import build_method, resolve_options
from lrfr_cli.finetune.base import batch_hard_blocks, degrade_rows
from lrfr_cli.finetune.derivenet import DeriveNetHead, derivenet_loss
from lrfr_cli.finetune.distill import feature_distance
from lrfr_cli.finetune.octuplet import octuplet_loss
from lrfr_cli.finetune.siamese import cross_triplet
from lrfr_cli.losses import build_head
from lrfr_cli.losses.recipe import resolve_loss
from lrfr_cli.models import build_backbone

from helpers import kill_at_step
from synthetic import make_identity_faces


# ----------------------------------------------------------------------------- brute force
def _np_dist(e: np.ndarray) -> np.ndarray:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    out = np.zeros((len(e), len(e)))
    for i in range(len(e)):
        for j in range(len(e)):
            out[i, j] = np.sqrt(max(np.sum((e[i] - e[j]) ** 2), 1e-12))
    return out


def _np_block(e: np.ndarray, y: np.ndarray, margin: float, rows: range, cols: range, n: int, exclude_copy: bool) -> float:
    """Batch-hard term of one block by explicit loops over anchors, positives and negatives."""
    d = _np_dist(e)
    terms = []
    for a in rows:
        hp, hn = None, None
        for p in cols:
            if y[p] != y[a] or p == a or (exclude_copy and p % n == a % n):
                continue
            hp = d[a, p] if hp is None else max(hp, d[a, p])
        for q in cols:
            if y[q] == y[a]:
                continue
            hn = d[a, q] if hn is None else min(hn, d[a, q])
        if hp is not None and hn is not None:
            terms.append(max(0.0, hp - hn + margin))
    return float(np.mean(terms)) if terms else 0.0


def _pk_batch(p: int = 3, k: int = 2, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)
    emb = torch.randn(2 * p * k, d, generator=g, dtype=torch.float64).float()
    return emb, torch.cat([labels, labels])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_octuplet_loss_equals_brute_force_loops(seed):
    emb, y = _pk_batch(seed=seed)
    n = emb.shape[0] // 2
    loss, terms = octuplet_loss(emb, y, margin=0.5)
    e, yy = emb.double().numpy(), y.numpy()
    hr, lr = range(n), range(n, 2 * n)
    want = {
        "trip_hh": _np_block(e, yy, 0.5, hr, hr, n, True),
        "trip_hl": _np_block(e, yy, 0.5, hr, lr, n, True),
        "trip_lh": _np_block(e, yy, 0.5, lr, hr, n, True),
        "trip_ll": _np_block(e, yy, 0.5, lr, lr, n, True),
    }
    for k, v in want.items():
        assert terms[k].item() == pytest.approx(v, abs=1e-5), k
    assert loss.item() == pytest.approx(sum(want.values()), abs=4e-5)
    assert loss.item() > 0  # random embeddings violate the margin: the comparison is not 0 == 0


def test_octuplet_picks_the_hardest_negative_and_only_it_gets_a_gradient():
    """Only anchor 0 has a violated triplet in the HR·HR block: its positive (row 1) at distance
    0.5, negatives at 0.8 (row 2), 1.2 (row 3) and 2.0 (row 4). Row 1's nearest negative is 1.23
    away (term 0); rows 2-4 are singletons (no positive: not anchors). The hardest negative gives
    (0.5 − 0.8 + 0.5) / 2 anchors = 0.1; any other negative would give 0."""
    t1, t2, t3 = 2 * np.arcsin(0.25), 2 * np.arcsin(0.4), 2 * np.arcsin(0.6)
    hr = torch.tensor([[1.0, 0.0, 0.0], [np.cos(t1), np.sin(t1), 0.0], [np.cos(t2), -np.sin(t2), 0.0],
                       [np.cos(t3), 0.0, np.sin(t3)], [-1.0, 0.0, 0.0]], dtype=torch.float32)
    y_hr = torch.tensor([0, 0, 1, 2, 3])
    emb = torch.cat([hr, hr]).requires_grad_(True)
    y = torch.cat([y_hr, y_hr])
    d = _np_dist(hr.double().numpy())
    assert d[0, 1] == pytest.approx(0.5, abs=1e-6) and d[0, 2] == pytest.approx(0.8, abs=1e-6) and d[1, 2] > 1.0
    blocks, counts = batch_hard_blocks(emb, y, margin=0.5)
    assert counts[0, 0].item() == 2
    assert blocks[0, 0].item() == pytest.approx(0.1, abs=1e-5)
    blocks[0, 0].backward()
    touched = set(torch.nonzero(emb.grad.abs().sum(1) > 1e-9).flatten().tolist())
    assert touched == {0, 1, 2}, touched  # anchor, hardest positive, hardest negative; not rows 3, 4


def test_own_copy_is_excluded_from_cross_positives_for_octuplet_but_not_siamese():
    # identity 0: HR rows 0, 1; identity 1: HR rows 2, 3. LR row 4 (copy of 0) is far from HR 0
    # (would be the hardest positive); LR row 5 (copy of 1) is close to HR 0.
    hr = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.2], [-1.0, -0.2]])
    lr = torch.tensor([[0.0, 1.0], [1.0, 0.05], [0.7, 0.7], [-0.9, -0.3]])  # row 6: a negative 0.77 from HR 0
    emb = torch.cat([hr, lr])
    y = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    d = _np_dist(emb.double().numpy())
    blocks, _ = batch_hard_blocks(emb, y, margin=0.5, exclude_own_copy=True)
    hn0 = min(d[0, 6], d[0, 7])
    # anchor 0 in the HR·LR block: only LR row 5 is a positive (row 4 is its own copy)
    want0 = max(0.0, d[0, 5] - hn0 + 0.5)
    want = np.mean([want0] + [max(0.0, max(d[a, q] for q in range(4, 8) if y[q] == y[a] and q % 4 != a) - min(d[a, q] for q in range(4, 8) if y[q] != y[a]) + 0.5) for a in (1, 2, 3)])
    assert blocks[0, 1].item() == pytest.approx(want, abs=1e-6)
    assert d[0, 4] > d[0, 5] + 0.5  # so including the copy would change the answer
    incl, _ = batch_hard_blocks(emb, y, margin=0.5, exclude_own_copy=False)
    want_incl = np.mean([max(0.0, max(d[a, q] for q in range(4, 8) if y[q] == y[a]) - min(d[a, q] for q in range(4, 8) if y[q] != y[a]) + 0.5) for a in range(4)])
    assert incl[0, 1].item() == pytest.approx(want_incl, abs=1e-6)
    assert incl[0, 1].item() != pytest.approx(blocks[0, 1].item(), abs=1e-3)


def test_siamese_loss_equals_brute_force():
    emb, y = _pk_batch(p=3, k=2, d=5, seed=3)
    n = emb.shape[0] // 2
    e, yy = emb.double().numpy(), y.numpy()
    trip = cross_triplet(emb, y, 0.5)
    want = 0.5 * (_np_block(e, yy, 0.5, range(n), range(n, 2 * n), n, False) + _np_block(e, yy, 0.5, range(n, 2 * n), range(n), n, False))
    assert trip.item() == pytest.approx(want, abs=1e-5)
    # AM-Softmax of each branch: s·(cos θ_y − m) against numpy
    head = build_head("cosface", 5, 3, s=30.0, m=0.35)
    w = head.weight.detach().double().numpy()

    def ams(rows: range) -> float:
        total = 0.0
        for i in rows:
            z = np.array([30.0 * (e[i] @ w[j] / np.linalg.norm(e[i]) / np.linalg.norm(w[j]) - (0.35 if j == yy[i] else 0.0)) for j in range(3)])
            total += -(z[yy[i]] - np.log(np.sum(np.exp(z))))
        return total / len(rows)

    task = build_method("siamese", torch.nn.Identity(), embedding_size=5, num_classes=3, lr_sizes=(8,), opts={}, loss=resolve_loss("cosface", ["s=30", "m=0.35"]))
    task.head.load_state_dict(head.state_dict())
    task.embed_pair = lambda batch, ctx: (emb, y)  # type: ignore[method-assign]
    out = task({"images": torch.zeros(1), "labels": y}, None)  # type: ignore[arg-type]
    assert out.terms["ams_hr"].item() == pytest.approx(ams(range(n)), rel=1e-5)
    assert out.terms["ams_lr"].item() == pytest.approx(ams(range(n, 2 * n)), rel=1e-5)
    assert out.loss.item() == pytest.approx(ams(range(n)) + ams(range(n, 2 * n)) + want, rel=1e-5)


def test_derivenet_loss_equals_brute_force_loops():
    torch.manual_seed(0)
    c, d, lam = 4, 5, 0.3
    head = DeriveNetHead(d, c, s=10.0, m=0.35, alpha=0.5)
    with torch.no_grad():
        head.recon.weight.add_(0.1 * torch.randn(d, d))
        head.centres[0] = F.normalize(torch.randn(d), dim=0)  # class 0 seen before, class 3 never
        head.seen[0] = True
    old_c, old_seen = head.centres.clone().double().numpy(), head.seen.clone().numpy()
    emb, y = _pk_batch(p=3, k=2, d=d, seed=5)  # classes 0, 1, 2
    loss, terms = derivenet_loss(head, emb, y, lam)
    n = emb.shape[0] // 2
    e = emb.double().numpy()
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    # centres: EMA of the class mean of normalised HR embeddings, first sight = the mean
    cen = old_c.copy()
    for j in range(c):
        rows = [i for i in range(n) if y[i] == j]
        if not rows:
            continue
        mean = np.mean([e[i] for i in rows], axis=0)
        v = 0.5 * old_c[j] + 0.5 * mean if old_seen[j] else mean
        cen[j] = v / np.linalg.norm(v)
    np.testing.assert_allclose(head.centres.double().numpy(), cen, atol=1e-6)
    W = head.weight.detach().double().numpy()
    R, b = head.recon.weight.detach().double().numpy(), head.recon.bias.detach().double().numpy()
    ce = 0.0
    for i in range(2 * n):
        z = np.zeros(c)
        for j in range(c):
            cos = e[i] @ W[j] / np.linalg.norm(W[j])
            mar = 0.0 if j == y[i] else 0.35 * max(0.0, cen[y[i]] @ cen[j])
            z[j] = 10.0 * (cos + mar)
        ce += -(z[y[i]] - np.log(np.sum(np.exp(z))))
    ce /= 2 * n
    rc = 0.0
    for i in range(n):
        r = R @ e[n + i] + b
        rc += np.sum((r - e[i]) ** 2) + np.sum((r - cen[y[i]]) ** 2)
    rc /= n
    assert terms["dmargin"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["recent"].item() == pytest.approx(rc, rel=1e-5)
    assert loss.item() == pytest.approx(ce + lam * rc, rel=1e-5)


def test_feature_distances_equal_numpy():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    a, b = s.double().numpy(), t.double().numpy()
    assert feature_distance(s, t, "mse").item() == pytest.approx(np.mean([(a[i, j] - b[i, j]) ** 2 for i in range(4) for j in range(6)]), rel=1e-6)
    cos = [a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i]) for i in range(4)]
    assert feature_distance(s, t, "cosine").item() == pytest.approx(np.mean([1 - x for x in cos]), rel=1e-5)


# ----------------------------------------------------------------------------- tasks
def _ctx(step: int = 0, rank: int = 0, world: int = 1) -> StepContext:
    return StepContext(step=step, epoch=0, seed=7, device=torch.device("cpu"), rank=rank, world_size=world)


def _images(b: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, 3, 112, 112), dtype=np.uint8))


def test_lr_draws_of_two_ranks_are_the_slices_of_one_process():
    imgs = _images(8)
    one, m1 = degrade_rows(imgs, (8, 16), _ctx(3), p=0.5)
    r0, m0 = degrade_rows(imgs[:4], (8, 16), _ctx(3, 0, 2), p=0.5)
    r1, mr1 = degrade_rows(imgs[4:], (8, 16), _ctx(3, 1, 2), p=0.5)
    assert torch.equal(torch.cat([r0, r1]), one) and torch.equal(torch.cat([m0, mr1]), m1)
    assert 0 < int(m1.sum()) < 8  # p = 0.5 degraded some rows, not all (seeded)
    assert torch.equal(one[~m1], imgs[~m1]) and not torch.equal(one[m1], imgs[m1])


def _tiny(emb: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("tiny", emb)


def test_derivenet_trains_the_backbone_and_sizes_the_classifier_by_classes():
    model = _tiny()
    task = build_method("derivenet", model, embedding_size=16, num_classes=5, lr_sizes=(8, 16), opts={}, loss=None)
    assert task.head.weight.shape == (5, 16)  # one row per class (the seed: one per image)
    groups = task.param_groups(5e-4)
    in_opt = {id(p) for g in groups for p in g["params"]}
    assert all(id(p) in in_opt for p in model.parameters())  # the seed left the backbone out
    opt = torch.optim.SGD(groups, lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {"images": _images(8), "labels": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
    task.train()
    out = task(batch, _ctx())
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("body.1.") for k in changed) and "fc.weight" in changed
    assert set(out.terms) == {"dmargin", "recent"}
    assert bool(task.head.seen[:4].all()) and not bool(task.head.seen[4])


def test_distill_teacher_is_frozen_and_unchanged():
    model, teacher = _tiny(), _tiny()
    task = build_method("distill", model, embedding_size=16, num_classes=4, lr_sizes=(8,), opts={"p_down": 0.5},
                        loss=resolve_loss("arcface"), teacher=teacher)
    assert all(not p.requires_grad for p in teacher.parameters())
    in_opt = {id(p) for g in task.param_groups(5e-4) for p in g["params"]}
    assert not any(id(p) in in_opt for p in teacher.parameters())
    assert "teacher" not in task.checkpoint_modules()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.SGD(task.param_groups(5e-4), lr=0.1)
    task.train()
    assert not teacher.training
    for step in range(2):
        out = task({"images": _images(8, step), "labels": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}, _ctx(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.terms["feature"].item() > 0
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BatchNorm statistics
    assert not torch.equal(model.state_dict()["fc.weight"], before["fc.weight"])


def test_distill_with_p_down_0_and_lambda_0_is_the_classifier_task():
    batch = {"images": _images(8), "labels": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
    model = _tiny()
    task = build_method("distill", model, embedding_size=16, num_classes=4, lr_sizes=(8,), opts={"p_down": 0.0, "lam": 0.0},
                        loss=resolve_loss("arcface"), teacher=_tiny())
    ref = ClassifierTask(_tiny(), build_head("arcface", 16, 4))
    ref.head.load_state_dict(task.head.state_dict())
    task.train(), ref.train()
    got = task(dict(batch), _ctx()).loss
    want = ref(dict(batch), _ctx()).loss
    assert got.item() == want.item()
    assert got.item() > 1.0  # a real classification loss, not 0 == 0
    # and with p_down > 0 the student sees other pixels: the loss moves
    lossy = build_method("distill", _tiny(), embedding_size=16, num_classes=4, lr_sizes=(8,), opts={"p_down": 1.0, "lam": 0.0},
                         loss=resolve_loss("arcface"), teacher=_tiny())
    lossy.head.load_state_dict(task.head.state_dict())
    lossy.train()
    assert lossy(dict(batch), _ctx()).loss.item() != pytest.approx(want.item(), abs=1e-4)


def test_pure_feature_distillation_has_no_head_and_matches_a_hand_computation():
    """id_weight=0, hr_weight=1, p_down=1, cosine: L = λ·[mean(1 − cos(s(LR), t(HR))) + mean(1 − cos(s(HR), t(HR)))]."""
    batch = {"images": _images(8), "labels": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
    model = _tiny()
    torch.manual_seed(1)
    teacher = build_backbone("tiny", 16)  # another network: the HR term is not 0 either
    opts = {"p_down": 1.0, "lam": 2.0, "feature_loss": "cosine", "hr_weight": 1.0, "id_weight": 0.0}
    task = build_method("distill", model, embedding_size=16, num_classes=4, lr_sizes=(8, 12), opts=opts,
                        loss=resolve_loss("arcface"), teacher=teacher)
    assert not task.has_head() and not any(True for _ in task.head.parameters())
    task.train(False)  # BatchNorm on running statistics, so separate forwards are comparable
    out = task(dict(batch), _ctx())
    assert set(out.terms) == {"feature", "feature_hr", "p_down"}
    lr_imgs, chosen = degrade_rows(batch["images"], (8, 12), _ctx())
    assert bool(chosen.all())
    ctx = _ctx()
    with torch.no_grad():
        t = teacher(ctx.prepare(batch["images"]))
        s_lr, s_hr = model(ctx.prepare(lr_imgs)), model(ctx.prepare(batch["images"]))
    want = 2.0 * ((1 - F.cosine_similarity(s_lr, t)).mean() + (1 - F.cosine_similarity(s_hr, t)).mean())
    # one batched forward vs two: fp32 rounding of O(1) cosines, far below the loss's size
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    assert out.loss.item() > 1e-3  # the student and the teacher start apart: a real loss


def test_distill_refuses_an_empty_loss():
    from lrfr_cli.errors import LrfrError

    with pytest.raises(LrfrError, match="nothing to learn"):
        resolve_options("distill", {"id_weight": 0.0, "lam": 0.0})


def test_distill_curriculum_raises_p_down_linearly():
    task = build_method("distill", _tiny(), embedding_size=16, num_classes=4, lr_sizes=(8,),
                        opts={"p_down": 0.1, "p_down_end": 0.5, "ramp_steps": 10}, loss=resolve_loss("arcface"), teacher=_tiny())
    assert [round(task.p_down(s), 6) for s in (0, 5, 10, 20)] == [0.1, 0.3, 0.5, 0.5]


@pytest.mark.parametrize("bad", [{"p_down": -0.1}, {"p_down": 1.5}, {"p_down_end": 2.0}, {"feature_loss": "l1"}, {"nope": 1},
                                 {"hr_weight": -1.0}, {"id_weight": float("nan")}])
def test_bad_distill_options_are_one_line_errors(bad):
    from lrfr_cli.errors import LrfrError

    with pytest.raises(LrfrError) as e:
        resolve_options("distill", bad)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny arcface parent run on synthetic faces: ``(workspace, faces)``."""
    from typer.testing import CliRunner

    from lrfr_cli.cli import app, hoist_global_options

    root = tmp_path_factory.mktemp("ft")
    faces = make_identity_faces(root / "faces", identities=4, per=4, seed=1, noise=25.0)
    ws = root / "ws"
    argv = ["-w", str(ws), "--quiet", "train", "--data", str(faces), "--backbone", "tiny", "--embedding-size", "32", "--loss", "arcface",
            "--batch-size", "8", "--max-steps", "2", "--workers", "0", "--device", "cpu", "--threads", "1", "--run", "parent"]
    r = CliRunner().invoke(app, hoist_global_options(argv))
    assert r.exit_code == 0, r.stdout
    return ws, faces


def _ft(cli, ws: Path, faces: Path, method: str, *extra: str):
    return cli(ws, "finetune", "--method", method, "--from", "runs/parent", "--data", str(faces), "--p", "2", "--k", "4",
               "--max-steps", "2", "--workers", "0", "--device", "cpu", "--threads", "1", "--json", *extra)


@pytest.mark.parametrize("method", ["octuplet", "distill", "siamese", "derivenet"])
def test_finetune_writes_a_run_with_its_parent_and_sha1(cli, parent, method):
    ws, faces = parent
    r = _ft(cli, ws, faces, method, "--log-every", "1")
    assert r.exit_code == 0, r.stdout + r.stderr
    out = r.json()
    run = ws / "runs" / f"{method}-parent"
    cfg = json.loads((run / "config.json").read_text())
    parent_ck = ws / "runs" / "parent" / "checkpoints" / "last.pt"
    assert cfg["parent"]["checkpoint_sha1"] == hashlib.sha1(parent_ck.read_bytes()).hexdigest()
    assert cfg["parent"]["name"] == "parent" and cfg["method"] == method and cfg["backbone"] == "tiny"
    assert out["steps"] == 2 and json.loads((run / "manifest.json").read_text())["status"] == "complete"
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2] and all(np.isfinite(ln["loss"]) for ln in lines)
    # the student started at the parent: step 1's weights moved away from it, but not elsewhere
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    pk = torch.load(parent_ck, weights_only=True)
    assert ck["model"].keys() == pk["model"].keys()
    # the same command again: up to date
    r2 = _ft(cli, ws, faces, method, "--log-every", "1")
    assert r2.exit_code == 0 and r2.json()["up_to_date"] is True


def test_eval_loads_a_finetuned_run(cli, parent, data_dir, tmp_path):
    ws, faces = parent
    r = _ft(cli, ws, faces, "octuplet", "--run", "oct-eval")
    assert r.exit_code == 0, r.stdout + r.stderr
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()[1:]
    pairs = tmp_path / "p.txt"
    pairs.write_text("1\t4\n" + "\n".join(lines[:4] + lines[500:504]) + "\n")
    r = cli(ws, "eval", "--dataset", "lfw", "--model", "runs/oct-eval", "--data", str(data_dir / "lfw"), "--pairs", str(pairs),
            "--align", "center-crop", "--sizes", "16,112", "--workers", "0", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    out = r.json()
    ck = ws / "runs" / "oct-eval" / "checkpoints" / "last.pt"
    assert out["model"]["checkpoint_sha1"] == hashlib.sha1(ck.read_bytes()).hexdigest()
    assert out["model"]["backbone"] == "tiny" and out["model"]["source"] == "run"
    assert set(out["results"]) >= {"16", "112"}


def _err(r) -> str:
    text = (r.stdout + r.stderr).strip()
    assert r.exit_code != 0, text
    assert "Traceback" not in text
    return text


def test_bad_input_is_one_line(cli, parent, tmp_path):
    ws, faces = parent
    r = cli(ws, "finetune", "--method", "octuplet", "--from", "runs/nope", "--data", str(faces), "--device", "cpu")
    assert "not a run folder" in _err(r)
    # an incomplete run
    run = ws / "runs" / "half"
    (run / "checkpoints").mkdir(parents=True)
    src = ws / "runs" / "parent"
    (run / "checkpoints" / "last.pt").write_bytes((src / "checkpoints" / "last.pt").read_bytes())
    (run / "config.json").write_text((src / "config.json").read_text())
    (run / "manifest.json").write_text(json.dumps({"status": "running"}))
    r = cli(ws, "finetune", "--method", "octuplet", "--from", "runs/half", "--data", str(faces), "--device", "cpu")
    assert "incomplete (status running)" in _err(r)
    # an external checkpoint whose embedding size is not the one asked for
    f = tmp_path / "ext.pt"
    torch.save(build_backbone("tiny", 64).state_dict(), f)
    r = cli(ws, "finetune", "--method", "distill", "--from", str(f), "--backbone", "tiny", "--embedding-size", "32", "--data", str(faces), "--device", "cpu")
    assert "64-d embeddings" in _err(r) and "--embedding-size 32" in _err(r)
    # too few identities with K images: names the minimum and how many qualify
    r = _ft(cli, ws, faces, "octuplet", "--k", "5")
    msg = _err(r)
    assert "at least 5 images" in msg and "has 0 such identities (of 4)" in msg
    r = cli(ws, "finetune", "--method", "octuplet", "--from", "runs/parent", "--data", str(faces), "--p", "5", "--k", "2", "--device", "cpu")
    assert "needs 5 identities with at least 2 images" in _err(r) and "has 4 such" in _err(r)
    for v in ("-0.5", "1.5"):
        r = _ft(cli, ws, faces, "distill", "--p-down", v)
        assert "--p-down" in _err(r) and "between 0 and 1" in _err(r)
    r = _ft(cli, ws, faces, "octuplet", "--p-down", "0.2")
    assert "method octuplet has no option 'p_down'" in _err(r)
    r = _ft(cli, ws, faces, "derivenet", "--loss", "cosface")
    assert "has its own classifier" in _err(r)
    r = _ft(cli, ws, faces, "octuplet", "--freeze-backbone")
    assert "nothing would change" in _err(r)
    r = _ft(cli, ws, faces, "nope")
    assert "unknown method 'nope'" in _err(r)
    assert len([ln for ln in _err(r).splitlines() if ln.strip()]) == 1


def test_help_describes_every_option_and_method(cli):
    from lrfr_cli.cli import COMMANDS, load_command

    cmd = load_command(next(s for s in COMMANDS if s.name == "finetune"))
    missing = [p.name for p in cmd.params if not (getattr(p, "help", None) or "").strip()]
    assert not missing, missing
    names = {o for p in cmd.params for o in p.opts}
    for flag in ("--freeze-backbone", "--lr", "--head-lr", "--epochs", "--max-steps", "--lr-sizes", "--p", "--k", "--p-down", "--from", "--method"):
        assert flag in names, flag
    r = cli(None, "finetune", "--help")
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    for method in ("octuplet", "distill", "siamese", "derivenet"):
        assert f"{method} (" in text, method


def test_every_method_step_is_finite_on_a_batch_of_pk_identities():
    batch = {"images": _images(8), "labels": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
    for method, loss in (("octuplet", None), ("siamese", "cosface"), ("derivenet", None), ("distill", "arcface")):
        opts = {"id_weight": 1.0} if method == "octuplet" else {}
        task = build_method(method, _tiny(), embedding_size=16, num_classes=4, lr_sizes=(8, 16), opts=opts,
                            loss=resolve_loss(loss or "arcface") if (loss or method == "octuplet") else None, teacher=_tiny())
        task.train()
        out = task(dict(batch), _ctx())
        assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.terms.values()), method
        out.loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.parameters()), method



# ----------------------------------------------------------------------------- resume and DDP (slow)
def _ckpt_weights(ws: Path, run: str) -> dict[str, torch.Tensor]:
    ck = torch.load(ws / "runs" / run / "checkpoints" / "last.pt", weights_only=True)
    out = {f"model.{k}": v for k, v in ck["model"].items()}
    out.update({f"head.{k}": v for k, v in ck["head"].items()})
    return out


@pytest.mark.slow
def test_sigkill_mid_finetune_then_same_command_resumes_to_the_uninterrupted_weights(cli, parent, tmp_path):
    ws0, faces = parent
    args = ["finetune", "--method", "derivenet", "--from", str(ws0 / "runs" / "parent" / "checkpoints" / "last.pt"), "--backbone", "tiny",
            "--data", str(faces), "--p", "2", "--k", "4", "--max-steps", "30", "--checkpoint-every", "5", "--log-every", "1",
            "--workers", "0", "--device", "cpu", "--threads", "1", "--run", "r"]
    ref, ws = tmp_path / "ref", tmp_path / "ws"
    r = cli(ref, *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    kill_at_step(ws, args, 10)
    metrics = ws / "runs" / "r" / "metrics.jsonl"
    r = cli(ws, *args, "--json")  # the same command, no --resume: an interrupted run resumes
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.json()["resumed_from"] is not None and 5 <= r.json()["resumed_from"] < 30 and r.json()["steps"] == 30
    a, b = _ckpt_weights(ws, "r"), _ckpt_weights(ref, "r")
    assert a.keys() == b.keys()
    for k in a:  # same arithmetic in the same order (one thread): equal up to fp32 noise
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k
    steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()]
    assert steps == list(range(1, 31))


@pytest.mark.slow
def test_ddp_two_process_octuplet_finetune_equals_one_process(cli, tmp_path):
    """sphere20 (no BatchNorm, whose per-process statistics would rightly differ); P×K = 2×2 over
    2 ranks, so each rank holds one identity and mining needs the other rank's embeddings."""
    import os
    import subprocess
    import sys

    from test_train_resume_ddp import _assert_same_updates

    faces = make_identity_faces(tmp_path / "faces", identities=3, per=4, seed=2, noise=25.0)
    torch.manual_seed(0)
    ext = tmp_path / "parent.pt"
    torch.save(build_backbone("sphere20", 64).state_dict(), ext)
    lrfr = str(Path(sys.executable).parent / "lrfr")
    args = ["finetune", "--method", "octuplet", "--id-weight", "1", "--from", str(ext), "--backbone", "sphere20", "--data", str(faces),
            "--identities-per-batch", "2", "--images-per-identity", "2", "--max-steps", "3", "--lr", "0.01", "--log-every", "1", "--workers", "0", "--device", "cpu",
            "--threads", "1", "--run-name", "d"]
    one, two = tmp_path / "one", tmp_path / "two"
    r = cli(one, *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", lrfr, "-w", str(two), "--json", *args],
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=400, check=False)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    out = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert out["world_size"] == 2 and out["steps"] == 3
    # Start: the parent's weights and the seeded fresh head (the same command at lr 1e-30 for 1 step).
    start_ws = tmp_path / "start"
    r = cli(start_ws, *[a if a != "0.01" else "1e-30" for a in args[:-2]], "--max-steps", "1", "--run-name", "d")
    assert r.exit_code == 0, r.stdout + r.stderr
    w1, w2, w0 = _ckpt_weights(one, "d"), _ckpt_weights(two, "d"), _ckpt_weights(start_ws, "d")
    _assert_same_updates(w2, w1, w0, steps=3)
    moved = sum(float((w1[k].double() - w0[k].double()).norm()) ** 2 for k in w1 if w1[k].is_floating_point()) ** 0.5
    assert moved > 1e-4, "the runs must move the weights, or comparing their updates proves nothing"
    l1 = [json.loads(ln)["loss"] for ln in (one / "runs" / "d" / "metrics.jsonl").read_text().splitlines()]
    l2 = [json.loads(ln)["loss"] for ln in (two / "runs" / "d" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(l2, l1, rtol=1e-4)
