"""The protocol registry (issue 12): a protocol is one module plus one ``register`` line.

The end-to-end test registers a throw-away protocol in the test itself and checks that ``lrfr
eval --dataset fake`` runs it, writes its JSON, and that ``lrfr report`` names its metrics the way
the protocol says, with the number recomputed here from the pixels (scikit-learn's ROC AUC).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from test_eval import _make_run, counter, lfw_small, pixel_embedding  # noqa: F401 - fixtures

from lrfr_cli import protocols
from lrfr_cli.data.sources import LfwCenterCrop
from lrfr_cli.protocols.base import EvalOptions, EvalProtocol, MetricRow, Plan
from lrfr_cli.protocols.lfw import image_prefix, read_pairs
from lrfr_cli.results import EvalRecord

BUILTIN = ["lfw", "scface", "survface", "tinyface", "bin", "ijbb", "ijbc"]


class FakeProtocol(EvalProtocol):
    """LFW-format pairs scored HR-HR by ROC AUC only: the smallest protocol that exercises every hook."""

    name = "fake"
    title = "Fake"
    layout = "ROOT/<Name>/<Name>_0001.jpg and a pairs file (--pairs)"
    options = ("pairs",)

    def plan(self, root: Path, opts: EvalOptions) -> Plan:
        from lrfr_cli import metrics as M
        from lrfr_cli.embed import Variant

        assert opts.pairs is not None
        pairs, _ = read_pairs(opts.pairs, image_prefix(root))
        hr = Variant(None)

        def score(emb: Any) -> dict[str, Any]:
            s = M.pair_cosine(emb.get(hr, [p.rel1 for p in pairs]), emb.get(hr, [p.rel2 for p in pairs]))
            return {"native": {"pairs": len(pairs), "auc": M.roc_auc(s, np.array([p.same for p in pairs]))}}

        return Plan(dataset=self.name, protocol=f"fake: {len(pairs)} pairs", images=LfwCenterCrop(root),
                    requests={hr: list(dict.fromkeys(r for p in pairs for r in (p.rel1, p.rel2)))}, score=score)

    def metrics(self, protocol_id: str, setting: str | None, results: Mapping[str, Any]) -> Iterable[MetricRow]:
        yield f"{protocol_id}:auc", results["native"]["auc"], True
        yield f"{protocol_id}:pairs", results["native"]["pairs"], False

    def headline(self, doc: Mapping[str, Any]) -> str:
        return f"fake AUC {100 * doc['results']['native']['auc']:.2f}%"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeProtocol:
    monkeypatch.setattr(protocols, "PROTOCOLS", protocols.PROTOCOLS.copy())  # restored after the test
    return protocols.register(FakeProtocol())  # type: ignore[return-value]


def test_builtin_protocols_registered_in_order() -> None:
    assert protocols.names() == BUILTIN
    assert [protocols.order(n) for n in BUILTIN] == [0, 1, 2, 3, 4, 5, 6] and protocols.order("nope") == 7
    assert protocols.get("survface").default_root(Path("/d")) == Path("/d/QMUL-SurvFace")
    assert protocols.get("lfw").default_root(Path("/d")) == Path("/d/lfw")
    with pytest.raises(ValueError):
        protocols.register(type("Bad", (EvalProtocol,), {"name": "Bad"})())


def test_registry_import_loads_neither_numpy_nor_torch() -> None:
    """lrfr report names metrics through the registry; that must stay cheap to import."""
    code = ("import sys, lrfr_cli.protocols, lrfr_cli.results\n"
            "print([m for m in ('numpy', 'torch', 'cv2', 'scipy') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_fake_protocol_end_to_end(cli, ws, data_dir, lfw_small, counter, fake) -> None:  # noqa: F811 - fixtures
    _make_run(ws)
    root = data_dir / "lfw"
    r = cli(ws, "eval", "--dataset", "fake", "--model", "tiny", "--data", str(root), "--pairs", str(lfw_small),
            "--workers", "0", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = r.json()
    saved = json.loads((ws / "evals" / "tiny" / "fake.json").read_text())
    assert saved["dataset"] == doc["dataset"] == "fake" and saved["protocol"] == "fake: 24 pairs"
    assert saved["sizes"] is None and list(saved["results"]) == ["native"]
    # --align (default mtcnn) is for protocols that list it (LFW): fake keeps its plan's images
    crop = LfwCenterCrop(root)
    assert saved["images"] == json.loads(json.dumps(crop.describe(), default=str))

    # the AUC from the pixels, independently: stand-in embedding of each centre-cropped face, cosine, sklearn
    pairs, _ = read_pairs(lfw_small, image_prefix(root))

    def emb(rel: str) -> np.ndarray:
        e = pixel_embedding(torch.from_numpy(crop.load(rel)).permute(2, 0, 1)[None])[0].double().numpy()
        return e / np.linalg.norm(e)

    cos = [float(emb(p.rel1) @ emb(p.rel2)) for p in pairs]
    want = roc_auc_score([p.same for p in pairs], cos)
    # float32 embeddings vs float64 here: the AUC moves only if two cosines (|cos| <= 1) swap within ~1e-6
    assert saved["results"]["native"]["auc"] == pytest.approx(want, abs=1e-9)

    # the report names its metrics as the protocol says, headline as a column
    names = cli(ws, "report", "--list-metrics")
    assert names.exit_code == 0, names.stderr
    assert names.stdout.split() == ["fake:auc", "fake:pairs"]
    rep = cli(ws, "report", "--format", "json", "--no-plots", "--no-save")
    assert rep.exit_code == 0, rep.stderr
    assert '"fake:auc"' in rep.stdout
    rec = EvalRecord.load(ws / "evals" / "tiny" / "fake.json")
    assert {m.name: (m.value, m.headline) for m in rec.metrics()} == {"fake:auc": (pytest.approx(want, abs=1e-9), True),
                                                                      "fake:pairs": (24.0, False)}


def test_unknown_dataset_lists_registered_ones(cli, ws, fake) -> None:
    r = cli(ws, "eval", "--dataset", "nope", "--model", "tiny")
    assert r.exit_code != 0
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "nope" in line
    assert all(n in line for n in [*BUILTIN, "fake"])


def test_record_of_unregistered_protocol_gets_generic_names(fake) -> None:
    """A record whose protocol is gone still reports: every numeric leaf, none a headline."""
    doc = {"command": "eval", "dataset": "gone", "model": {"name": "m"},
           "results": {"native": {"score": 0.5, "n": 3, "flag": True, "note": "x"}, "k2": {"score": 0.25}}}
    got = [(m.name, m.value, m.headline) for m in EvalRecord.from_dict(doc).metrics()]
    assert got == [("gone:score", 0.5, False), ("gone:n", 3.0, False), ("gone/k2:score", 0.25, False)]
