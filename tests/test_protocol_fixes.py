"""Protocol details that change numbers: tied identification scores count against the probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_protocols import FakeEmb, _scface_tree

from lrfr_cli.embed import Variant
from lrfr_cli.protocols import scface


def test_scface_constant_embeddings_score_zero_rank1(tmp_path: Path) -> None:
    """A collapsed network (one vector for every face) must not look perfect on SCface."""
    ids = [f"{i:03d}" for i in range(1, 21)]
    root, lm = _scface_tree(tmp_path, ids, distances=(1, 2))
    plan = scface.plan_scface(root, lm, [1, 2])
    v = np.random.default_rng(0).normal(size=64)
    res = plan.score(FakeEmb({r: v for r in plan.requests[Variant(None)]}))
    for d in ("d1", "d2"):
        assert res[d]["probes"] == 100
        assert res[d]["rank1"] == 0.0
        assert res[d]["cmc"] == [0.0] * 19 + [1.0]  # each probe ranks behind all 19 wrong mugshots
        assert set(res[d]["rank1_per_camera"].values()) == {0.0}
    assert "ties" in plan.info["rank_ties"]


def test_collapsed_network_scores_chance_or_worse_end_to_end(cli, ws: Path, tmp_path: Path) -> None:
    """`lrfr eval --dataset scface` with a real network whose output ignores the face: rank-1 0, not 100 %."""
    import json

    import torch
    from PIL import Image

    from lrfr_cli.models import build_backbone

    run = ws / "runs" / "collapsed"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    net = build_backbone("tiny")
    with torch.no_grad():
        net.fc.weight.zero_()  # the embedding is fc.bias through the final BN: one vector for every face
    cfg = {"backbone": "tiny", "embedding_size": 512, "input_size": 112}
    torch.save({"model": net.state_dict(), "config": cfg}, run / "checkpoints" / "last.pt")
    (run / "config.json").write_text(json.dumps(cfg))

    ids = [f"{i:03d}" for i in range(1, 9)]
    root, lm = _scface_tree(tmp_path, ids, distances=(2,))
    rng = np.random.default_rng(0)
    for f in (root / "mugshot_frontal_original_all").iterdir():
        Image.fromarray(rng.integers(0, 256, (120, 110, 3), dtype=np.uint8)).save(f, format="JPEG")
    for f in (root / "surveillance_cameras_all").iterdir():
        Image.fromarray(rng.integers(0, 256, (120, 110, 3), dtype=np.uint8)).save(f, format="JPEG")
    r = cli(ws, "eval", "--dataset", "scface", "--distance", "2", "--model", "collapsed", "--data", str(root),
            "--landmarks", str(lm), "--workers", "0", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    d = r.json()
    res = d["results"]["d2"]
    assert res["probes"] == 40 and res["gallery"] == 8
    assert res["rank1"] == 0.0 and res["cmc"] == [0.0] * 7 + [1.0]
    assert "ties" in d["protocol_info"]["rank_ties"]
