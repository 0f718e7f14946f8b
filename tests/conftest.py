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
