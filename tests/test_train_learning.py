"""Learning is real: the shared ``trained_model`` run cuts its loss and its embeddings separate
unseen images of its training identities far better than the same network untrained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lrfr_cli.data.images import load_rgb
from lrfr_cli.data.lists import read_list
from lrfr_cli.engine import load_checkpoint, seed_everything
from lrfr_cli.engine.validate import embed
from lrfr_cli.models import build_backbone


def _auc(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray) -> float:
    e = embed(model, images, torch.device("cpu"))
    sim = (e @ e.T).numpy()
    iu = np.triu_indices(len(labels), 1)
    return float(roc_auc_score((labels[:, None] == labels[None, :])[iu], sim[iu]))


@pytest.mark.slow
def test_training_cuts_loss_and_separates_held_out_images(trained_model):
    ws, run = trained_model
    run_dir = ws / "runs" / run
    metrics = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    counts = json.loads((run_dir / "manifest.json").read_text())["counts"]
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = ck["config"]
    # Softmax over C classes starts near ln C; one epoch must cut it substantially.
    assert counts["first_loss"] == pytest.approx(math.log(cfg["num_classes"]), rel=0.15)
    assert metrics[-1]["loss"] < 0.8 * counts["first_loss"]

    lst = ws / "lists" / "celeba"
    held_out = read_list(lst / "val.txt")  # images the model never saw, of identities it trained on
    root = Path(json.loads((lst / "labels.json").read_text())["root"])
    images = torch.from_numpy(np.stack([load_rgb(root / rel) for rel, _ in held_out]).transpose(0, 3, 1, 2).copy())
    labels = np.asarray([lab for _, lab in held_out])
    trained = build_backbone(cfg["backbone"], cfg["embedding_size"])
    trained.load_state_dict(ck["model"])
    seed_everything(0)
    untrained = build_backbone(cfg["backbone"], cfg["embedding_size"])
    auc_trained, auc_untrained = _auc(trained, images, labels), _auc(untrained, images, labels)
    assert auc_trained > auc_untrained + 0.08, (auc_trained, auc_untrained)
    assert auc_trained > 0.75
