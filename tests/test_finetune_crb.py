"""The ``crb`` fine-tuning method: a margin head on Cross-Resolution Batches from a parent model,
with a classifier warm-up during which the backbone cannot move."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrfr_cli.data.crb import cross_resolution_batch
from lrfr_cli.engine.seed import step_seed
from lrfr_cli.engine.tasks import StepContext
from lrfr_cli.errors import LrfrError
from lrfr_cli.finetune import build_method, resolve_options
from lrfr_cli.losses.recipe import resolve_loss
from lrfr_cli.models import build_backbone


def _ctx(step: int = 0) -> StepContext:
    return StepContext(step=step, epoch=0, seed=7, device=torch.device("cpu"), rank=0, world_size=1)


def _batch(b: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    imgs = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, 3, 112, 112), dtype=np.uint8))
    return {"images": imgs, "labels": torch.arange(b) // 2}


def _task(**opts):
    torch.manual_seed(0)
    model = build_backbone("tiny", 16)
    return build_method("crb", model, embedding_size=16, num_classes=4, lr_sizes=(8, 16), opts=opts, loss=resolve_loss("approach1"))


def test_crb_loss_is_the_head_on_the_cross_resolution_batch():
    task = _task(mode="copies")
    task.train(False)  # running statistics: the reference forward below sees the same network
    batch = _batch()
    out = task(dict(batch), _ctx(3))
    ref = cross_resolution_batch(batch["images"], batch["labels"], (8, 16), "copies", 0.5, generator=step_seed(7, 3, 0))
    assert ref.images.shape[0] == 16 and int(ref.is_lr.sum()) == 8
    with torch.no_grad():
        emb = task.model(_ctx(3).prepare(ref.images))
        want = task.head.loss(emb, ref.labels, None, is_lr=ref.is_lr)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert out.terms["head_warmup"].item() == 0.0


def test_head_warmup_keeps_the_backbone_still_then_releases_it():
    task = _task(head_warmup=2)
    opt = torch.optim.AdamW(task.param_groups(5e-4), lr=1e-2)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    head_before = {k: v.clone() for k, v in task.head.state_dict().items()}
    task.train()
    for step in range(2):
        out = task(_batch(seed=step), _ctx(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert out.terms["head_warmup"].item() == 1.0
    weights = {k for k, v in task.model.named_parameters()}
    for k in weights:  # not one weight moved (BatchNorm statistics may: the forward ran in train mode)
        assert torch.equal(task.model.state_dict()[k], before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in task.head.state_dict().items())
    out = task(_batch(seed=5), _ctx(2))
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    assert out.terms["head_warmup"].item() == 0.0
    assert sum(not torch.equal(task.model.state_dict()[k], before[k]) for k in weights) >= len(weights) // 2


@pytest.mark.parametrize("bad", [{"mode": "both"}, {"lr_prob": 1.5}, {"head_warmup": -1}, {"head_warmup": 1.5}])
def test_bad_crb_options_are_one_line_errors(bad):
    with pytest.raises(LrfrError) as e:
        resolve_options("crb", bad)
    assert "\n" not in str(e.value)
