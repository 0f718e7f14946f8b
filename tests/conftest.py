"""Shared fixtures: the data folder (LRFR_DATA), temporary workspaces, an in-process CLI runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrfr_cli.cli import app


def _data_dir() -> Path:
    return Path(os.environ.get("LRFR_DATA", "data")).expanduser()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder; tests that need it skip with a reason when it is absent."""
    d = _data_dir()
    if not (d / "celeba_subset").is_dir() and not (d / "lfw").is_dir():
        pytest.skip(f"LRFR_DATA={d} does not hold the shared data (celeba_subset/, lfw/); set LRFR_DATA")
    return d


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A fresh workspace folder."""
    return tmp_path / "ws"


class CliResult:
    def __init__(self, result):  # type: ignore[no-untyped-def]
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception

    def json(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


@pytest.fixture
def cli():
    """Run ``lrfr`` in-process: ``cli(ws, "degrade", src, "--sizes", "8")`` → CliResult."""
    runner = CliRunner()

    def run(workspace: Path | str | None, *args: str) -> CliResult:
        argv = (["-w", str(workspace)] if workspace is not None else []) + [str(a) for a in args]
        from lrfr_cli.cli import hoist_global_options

        return CliResult(runner.invoke(app, hoist_global_options(argv), catch_exceptions=True))

    return run


# --------------------------------------------------------------------------- trained model (issue 5)
TRAINED_RUN = "fixture-tiny-softmax"


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, data_dir: Path) -> tuple[Path, str]:
    """A small model trained once per session on celeba_subset: ``(workspace, run name)``.

    ``lrfr make-list`` holds out 10 % of each identity's images (``lists/celeba/val.txt``: unseen
    images of training identities), then ``lrfr train`` fits the ``tiny`` backbone with a softmax
    head for one epoch (AdamW, cached uint8 pack, one thread): about 1 minute on 2 busy cores. Its embeddings
    separate identities clearly better than chance (asserted in tests/test_train_learning.py).
    Use ``runs/<name>/checkpoints/last.pt`` (``config.json`` beside it names the backbone).
    """
    src = data_dir / "celeba_subset" / "images"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    ws = tmp_path_factory.mktemp("trained") / "ws"
    from lrfr_cli.cli import hoist_global_options

    runner = CliRunner()

    def run(*args: str) -> None:
        argv = hoist_global_options(["-w", str(ws), "--quiet", *[str(a) for a in args]])
        r = runner.invoke(app, argv, catch_exceptions=True)
        assert r.exit_code == 0, f"lrfr {' '.join(map(str, args))} failed: {r.stdout}{r.stderr}"

    run("make-list", src, "--out", "celeba", "--val-fraction", "0.1", "--min-images", "2", "--seed", "0")
    run(
        "train", "--data", "lists/celeba", "--backbone", "tiny", "--loss", "softmax", "--optimizer", "adamw",
        "--lr", "2e-3", "--weight-decay", "0.05", "--epochs", "1", "--batch-size", "64", "--workers", "0",
        "--cache", "--seed", "0", "--device", "cpu", "--threads", "1", "--run", TRAINED_RUN,
    )
    return ws, TRAINED_RUN
