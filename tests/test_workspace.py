"""Workspace behaviour through real commands: skip-if-done, --force, resume after a crash or a
SIGKILL, the writer lock, bad input leaving nothing behind, `lrfr status`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lrfr_cli.workspace import Workspace, atomic_path, atomic_write_text

from helpers import kill_when


def _visible(root: Path) -> list[Path]:
    """Outputs a reader sees (temp files are hidden dot-files)."""
    return sorted(p for p in root.rglob("*.png") if not p.name.startswith("."))


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in _visible(root)}


@pytest.fixture
def src(tmp_path: Path, data_dir: Path) -> Path:
    """40 LFW images in an identity tree."""
    out = tmp_path / "src"
    lfw = data_dir / "lfw" / "lfw-deepfunneled"
    for person in sorted(p for p in lfw.iterdir() if p.is_dir())[:40]:
        f = sorted(person.glob("*.jpg"))[0]
        (out / person.name).mkdir(parents=True)
        (out / person.name / f.name).write_bytes(f.read_bytes())
    return out


def _one_line_error(r) -> None:  # type: ignore[no-untyped-def]
    assert r.exit_code != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_skip_if_done_and_force(cli, ws, src):
    args = ("degrade", src, "--sizes", "8", "--name", "d", "--workers", "1", "--json")
    first = cli(ws, *args)
    assert first.exit_code == 0 and first.json()["up_to_date"] is False
    out = ws / "degraded" / "d" / "8px"
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    second = cli(ws, *args)
    assert second.exit_code == 0 and second.json()["up_to_date"] is True
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes  # nothing rewritten
    forced = cli(ws, *args, "--force")
    assert forced.exit_code == 0 and forced.json()["written"] == 40
    assert all(p.stat().st_mtime_ns != m for p, m in mtimes.items())
    # other options for the same artifact: refused without --force, nothing changed
    other = cli(ws, "degrade", src, "--sizes", "8", "--name", "d", "--down-method", "area", "--workers", "1")
    _one_line_error(other)
    assert "--force" in other.stderr
    # inputs changed (an image added) is also another key
    (src / "New_Person").mkdir()
    next(src.rglob("*.jpg")).replace(src / "New_Person" / "x.jpg")
    assert cli(ws, *args).exit_code != 0


def test_crash_midway_leaves_running_and_rerun_equals_clean_run(cli, tmp_path, src, monkeypatch):
    ref_ws = tmp_path / "ref"
    assert cli(ref_ws, "degrade", src, "--sizes", "8,12", "--noise", "4", "--name", "d", "--workers", "1").exit_code == 0
    reference = {s: _digest(ref_ws / "degraded" / "d" / f"{s}px") for s in (8, 12)}

    import lrfr_cli.data.degrade_files as dfm

    real = dfm._work
    calls = {"n": 0}

    def crashing(args):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 7:
            raise RuntimeError("simulated crash")
        return real(args)

    ws = tmp_path / "ws"
    monkeypatch.setattr(dfm, "_work", crashing)
    crashed = cli(ws, "degrade", src, "--sizes", "8,12", "--noise", "4", "--name", "d", "--workers", "1")
    assert crashed.exit_code != 0
    for s in (8, 12):
        m = json.loads((ws / "degraded" / "d" / f"{s}px" / "manifest.json").read_text())
        assert m["status"] == "running" and "simulated crash" in m["error"]
        assert len(list((ws / "degraded" / "d" / f"{s}px").rglob("*.png"))) == 7
    monkeypatch.setattr(dfm, "_work", real)
    resumed = cli(ws, "degrade", src, "--sizes", "8,12", "--noise", "4", "--name", "d", "--workers", "1", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.json()["already_present"] == 14 and resumed.json()["written"] == 66
    for s in (8, 12):
        assert _digest(ws / "degraded" / "d" / f"{s}px") == reference[s]
        m = json.loads((ws / "degraded" / "d" / f"{s}px" / "manifest.json").read_text())
        assert m["status"] == "complete" and m.get("resumed_from")


@pytest.mark.slow
def test_sigkill_then_resume(cli, tmp_path, src):
    ref_ws = tmp_path / "ref"
    assert cli(ref_ws, "degrade", src, "--sizes", "16", "--name", "d", "--workers", "1").exit_code == 0
    reference = _digest(ref_ws / "degraded" / "d" / "16px")

    ws = tmp_path / "ws"
    out = ws / "degraded" / "d" / "16px"
    code = "import sys; from lrfr_cli.cli import app; sys.argv[0]='lrfr'; app()"
    argv = [sys.executable, "-c", code, "-w", str(ws), "-q", "degrade", str(src), "--sizes", "16", "--name", "d", "--workers", "1"]
    kill_when(argv, lambda: len(_visible(out)) >= 5, timeout=120, poll=0.05)
    written = len(_visible(out))
    assert 5 <= written < 40, "the kill must land mid-run"
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "running"  # never complete-looking
    # every visible file is whole (decodable); temp files are hidden and removed on resume
    from PIL import Image

    for p in _visible(out):
        Image.open(p).load()
    r = cli(ws, "degrade", src, "--sizes", "16", "--name", "d", "--workers", "1", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["already_present"] == written
    assert _digest(out) == reference
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]


def test_lock_refuses_concurrent_writer(cli, ws, src):
    art = Workspace(ws).artifact("degraded", "d", "8px")
    with art.lock():
        r = cli(ws, "degrade", src, "--sizes", "8", "--name", "d", "--workers", "1")
    assert r.exit_code == 3
    assert "another lrfr process" in r.stderr and str(os.getpid()) in r.stderr
    assert not list((ws / "degraded").rglob("*.png"))
    assert cli(ws, "degrade", src, "--sizes", "8", "--name", "d", "--workers", "1").exit_code == 0


def test_lock_is_released_when_holder_is_killed(tmp_path):
    ws = tmp_path / "ws"
    code = (
        "import sys, time; from lrfr_cli.workspace import Workspace;"
        f"a = Workspace({str(ws)!r}).artifact('x');"
        "cm = a.lock(); cm.__enter__(); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    from lrfr_cli.errors import LockedError

    with pytest.raises(LockedError):
        with Workspace(ws).artifact("x").lock():
            pass
    proc.kill()
    proc.wait()
    with Workspace(ws).artifact("x").lock():  # no stale lock after SIGKILL
        pass


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "file", "method", "size0", "too_big", "bad_sizes", "jpeg_range"],
)
def test_bad_input_one_line_nothing_written(cli, ws, tmp_path, src, case):
    target = src
    extra: list[str] = []
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "empty":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "file":
        target = tmp_path / "f.jpg"
        target.write_text("x")
    elif case == "method":
        extra = ["--down-method", "lanczos"]
    elif case == "size0":
        extra = ["--sizes", "0"]
    elif case == "too_big":
        extra = ["--sizes", "8,400"]
    elif case == "bad_sizes":
        extra = ["--sizes", "eight"]
    elif case == "jpeg_range":
        extra = ["--jpeg", "0"]
    args = ["degrade", target, "--workers", "1"] + (extra if "--sizes" in extra else ["--sizes", "8"] + extra)
    r = cli(ws, *args)
    if case == "jpeg_range":  # Typer's own range check: usage error, exit 2, no traceback
        assert r.exit_code == 2 and "Traceback" not in r.stderr
    else:
        _one_line_error(r)
    assert not ws.exists() or not list(ws.rglob("*.png"))
    assert not ws.exists() or not list(ws.rglob("manifest.json"))


def test_unwritable_workspace(cli, tmp_path, src):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the workspace's parent should be")
    r = cli(blocker / "ws", "degrade", src, "--sizes", "8", "--workers", "1")
    _one_line_error(r)
    assert "workspace" in r.stderr
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            _one_line_error(cli(ro / "ws", "degrade", src, "--sizes", "8", "--workers", "1"))
        finally:
            ro.chmod(0o700)


def test_status_lists_artifacts(cli, ws, src):
    assert cli(ws, "degrade", src, "--sizes", "8", "--name", "d", "--workers", "1").exit_code == 0
    assert cli(ws, "make-list", src, "--out", "l").exit_code == 0
    r = cli(ws, "status", "--json")
    assert r.exit_code == 0
    rows = {a["artifact"]: a for a in r.json()["artifacts"]}
    assert set(rows) == {"degraded/d/8px", "lists/l"}
    assert rows["degraded/d/8px"]["status"] == "complete" and rows["degraded/d/8px"]["bytes"] > 0
    assert rows["lists/l"]["counts"]["images"] == 40
    table = cli(ws, "status")
    assert "degraded/d/8px" in table.stdout and "complete" in table.stdout


def test_atomic_path_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_global_options_after_subcommand(cli, ws, src):
    r = cli(None, "make-list", src, "--json", "-w", ws, "--out", "z")
    assert r.exit_code == 0, r.stderr
    assert r.json()["images"] == 40 and (ws / "lists" / "z" / "train.txt").exists()


# --------------------------------------------------------------------------- lock ownership (issue 9.2)
def _try_lock_in_subprocess(ws: Path, rel: str) -> str:
    """'free' or 'locked', as another process sees the artifact's lock."""
    code = (
        "import sys; from lrfr_cli.workspace import Workspace; from lrfr_cli.errors import LockedError\n"
        "try:\n"
        f"    with Workspace({str(ws)!r}).artifact(*{rel.split('/')!r}).lock(): print('free')\n"
        "except LockedError: print('locked')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_lock_dies_with_its_process_not_with_forked_children(tmp_path):
    """A forked child (a DataLoader worker) outliving its SIGKILLed parent must not keep the lock.

    With ``flock`` the child shares the open file description and so the lock: this test then sees
    ``LockedError`` until the orphan exits."""
    ws = tmp_path / "ws"
    code = (
        "import os, sys, time; from lrfr_cli.workspace import Workspace\n"
        f"cm = Workspace({str(ws)!r}).artifact('x').lock(); cm.__enter__()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    time.sleep(60); os._exit(0)\n"
        "print(child, flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        from lrfr_cli.errors import LockedError

        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            with Workspace(ws).artifact("x").lock():
                pass
        proc.kill()  # the parent only: its child lives on as an orphan
        proc.wait()
        os.kill(child, 0)  # still alive
        with Workspace(ws).artifact("x").lock():
            pass
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_lock_excludes_within_one_process_and_a_refusal_keeps_it(tmp_path):
    """Record locks never conflict inside one process, and closing any descriptor of the file
    drops them: a second in-process writer must be refused without releasing the first's lock."""
    from lrfr_cli.errors import LockedError

    ws = tmp_path / "ws"
    first = Workspace(ws).artifact("a", "b")
    with first.lock():
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            with Workspace(ws).artifact("a", "b").lock():  # another object, same file
                pass
        assert _try_lock_in_subprocess(ws, "a/b") == "locked"  # the refusal did not release it
        with Workspace(ws).artifact("a", "c").lock():  # another artifact is independent
            pass
        assert _try_lock_in_subprocess(ws, "a/b") == "locked"
    assert _try_lock_in_subprocess(ws, "a/b") == "free"
    with Workspace(ws).artifact("a", "b").lock():  # released in-process too
        pass


def test_forked_child_leaving_the_lock_block_leaves_the_parents_lock(tmp_path):
    ws = tmp_path / "ws"
    with Workspace(ws).artifact("x").lock():
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                from lrfr_cli.workspace import _HELD

                code = 1 if _HELD else 0  # the child owns none of the parent's locks
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _try_lock_in_subprocess(ws, "x") == "locked"


def test_lock_on_a_file_system_without_posix_locks_is_one_clear_error(tmp_path, monkeypatch):
    import errno as _errno
    import fcntl

    from lrfr_cli.errors import LockedError, LrfrError

    def no_locks(fd, op):  # type: ignore[no-untyped-def]
        raise OSError(_errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with pytest.raises(LrfrError, match="does not support POSIX locks") as e:
        with Workspace(tmp_path / "ws").artifact("x").lock():
            pass
    assert not isinstance(e.value, LockedError)
    monkeypatch.undo()
    with Workspace(tmp_path / "ws").artifact("x").lock():  # the failed attempt left nothing held
        pass
