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
