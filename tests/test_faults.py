"""Faults and bad inputs a hostile user finds (issue 18.2): each one a clear line, never a crash.

Each fault's tests failed on the code before its fix: a list file with a stray byte, file
names that are not UTF-8, 16-bit greyscale PNGs, NaN/inf options, a full disk, Ctrl-C and SIGTERM
with DataLoader workers, a killed ``report``'s temp folder, and huge images.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrfr_cli.data.images import ImageReadError, load_rgb

from helpers import alive, descendants, kill_when, lrfr_argv, signal_all
from synthetic import make_identity_faces

FAST = ["--backbone", "tiny", "--loss", "softmax", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--threads", "1"]
LATIN1 = b"caf\xe9.png"  # a Latin-1 file name: not valid UTF-8


def _one_line_error(r) -> str:  # type: ignore[no-untyped-def]
    """The run failed with exit 2 and one ``error:`` line, no traceback."""
    text = (r.stdout + r.stderr).strip()
    assert r.exit_code == 2, text
    assert "Traceback" not in text and "internal error" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    return lines[0]


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    return make_identity_faces(tmp_path / "faces", 3, 4, seed=0, noise=20.0)


# --------------------------------------------------------------------------- 1. list file bytes
def test_list_with_a_non_utf8_byte_names_file_and_line(cli, ws, faces, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"id00/0.png 0\nid00/a\xff.png 0\n")
    line = _one_line_error(cli(ws, "train", "--data", bad, "--data-root", faces, *FAST, "--max-steps", "1"))
    assert f"{bad}:2:" in line and "a\\xff.png" in line and "not valid UTF-8" in line
    bad.write_bytes(b"id00/0.png 0\nid01/0.png 1\xff\n")
    line = _one_line_error(cli(ws, "train", "--data", bad, "--data-root", faces, *FAST, "--max-steps", "1"))
    assert f"{bad}:2:" in line and "not an integer" in line
    assert not (ws / "runs").exists()  # refused before anything was written


# --------------------------------------------------------------------------- 2. non-UTF-8 file names
def test_latin1_file_name_is_listed_degraded_and_trained_on(cli, ws, faces):
    src = faces / "id00" / "0.png"
    os.rename(os.fsencode(src), os.path.join(os.fsencode(faces / "id00"), LATIN1))
    # An identical copy under a plain name: its degraded output is what the Latin-1 one must be.
    plain = faces / "id01" / "twin.png"
    plain.write_bytes(Path(os.fsdecode(os.path.join(os.fsencode(faces / "id00"), LATIN1))).read_bytes())

    r = cli(ws, "make-list", faces, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.json()["images"] == 13
    listed = (ws / "lists" / "faces" / "train.txt").read_bytes()
    assert b"id00/" + LATIN1 + b" 0\n" in listed  # the name's own bytes, not an escape

    r = cli(ws, "degrade", faces, "--sizes", "8", "--no-upsample", "-j", "1", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.json()["failed"] == 0 and r.json()["written"] == 13
    out_dir = os.fsencode(ws / "degraded" / "faces" / "8px" / "id00")
    assert LATIN1 in os.listdir(out_dir)
    got = np.asarray(Image.open(os.fsdecode(os.path.join(out_dir, LATIN1))))
    want = np.asarray(Image.open(ws / "degraded" / "faces" / "8px" / "id01" / "twin.png"))
    assert got.shape == (8, 8, 3) and np.array_equal(got, want)

    # The list round-trips: training reads the Latin-1 entry from it.
    r = cli(ws, "train", "--data", "lists/faces", *FAST, "--max-steps", "1", "--run", "latin1", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.json()["images"] == 13


# --------------------------------------------------------------------------- 3. 16-bit greyscale
def test_16bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 65536, size=(40, 30), dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")  # what the test is about
    want = np.repeat((a >> 8).astype(np.uint8)[..., None], 3, axis=2)  # the top byte, by numpy
    got = load_rgb(tmp_path / "g16.png")
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    # 32-bit integer (TIFF, mode I) holding 16-bit values: the same.
    Image.fromarray(a.astype(np.int32)).save(tmp_path / "g32.tif")
    assert np.array_equal(load_rgb(tmp_path / "g32.tif"), want)


def test_16bit_png_degrades_like_its_8bit_version(cli, tmp_path):
    rng = np.random.default_rng(4)
    a8 = rng.integers(0, 256, size=(48, 48), dtype=np.uint16)
    a16 = (a8 << 8) | rng.integers(0, 256, size=a8.shape, dtype=np.uint16)  # same top byte
    for name, arr in (("deep", a16), ("flat", a8.astype(np.uint8))):
        (tmp_path / name / "x").mkdir(parents=True)
        Image.fromarray(arr).save(tmp_path / name / "x" / "f.png")
    outs = []
    for name in ("deep", "flat"):
        r = cli(tmp_path / "ws", "degrade", tmp_path / name, "--sizes", "12", "-j", "1", "--json")
        assert r.exit_code == 0 and r.json()["failed"] == 0, r.stdout + r.stderr
        outs.append(np.asarray(Image.open(tmp_path / "ws" / "degraded" / name / "12px" / "x" / "f.png")))
    assert np.array_equal(outs[0], outs[1])
    assert abs(float(outs[0].mean()) - float(a8.mean())) < 10  # not the nearly-white clip (~250)


# --------------------------------------------------------------------------- 9. huge images
def test_pixel_limit_refuses_and_degrade_lists_it(cli, ws, tmp_path, monkeypatch):
    src = tmp_path / "src" / "p"
    src.mkdir(parents=True)
    Image.new("RGB", (64, 64), (90, 120, 150)).save(src / "small.png")
    Image.new("RGB", (1000, 800), (90, 120, 150)).save(src / "huge.png")  # 0.8 MP, a few KB on disk
    monkeypatch.setenv("LRFR_MAX_MEGAPIXELS", "0.5")
    with pytest.raises(ImageReadError, match=r"1000x800 .* over the 0.5 MP limit .*LRFR_MAX_MEGAPIXELS"):
        load_rgb(src / "huge.png")
    r = cli(ws, "degrade", tmp_path / "src", "--sizes", "8", "-j", "1", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    out = r.json()
    assert out["failed"] == 1 and out["failures"][0]["path"] == "p/huge.png"
    assert "LRFR_MAX_MEGAPIXELS" in out["failures"][0]["reason"]
    rows = (ws / "degraded" / "src" / "8px" / "failures.csv").read_text().splitlines()
    assert rows[1].startswith("p/huge.png,")
    assert (ws / "degraded" / "src" / "8px" / "p" / "small.png").is_file()
    assert not (ws / "degraded" / "src" / "8px" / "p" / "huge.png").exists()
    monkeypatch.setenv("LRFR_MAX_MEGAPIXELS", "1")
    assert load_rgb(src / "huge.png").shape == (800, 1000, 3)
    monkeypatch.setenv("LRFR_MAX_MEGAPIXELS", "nan")
    with pytest.raises(Exception, match="positive number"):
        load_rgb(src / "small.png")


def test_default_pixel_limit_and_pillow_bomb_warning_not_hidden(tmp_path, monkeypatch):
    from lrfr_cli.data import images

    monkeypatch.delenv("LRFR_MAX_MEGAPIXELS", raising=False)
    assert images.max_pixels() == 50_000_000
    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # warns above 6000 px, refuses above 12000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_rgb(tmp_path / "a.png")
    assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- 4. NaN / inf options
def _float_options() -> list[tuple[str, str]]:
    """(command, option) for every float-typed option of every command, found by walking the
    Typer/click commands as the CLI builds them."""
    from lrfr_cli.cli import available_commands, load_command

    found = []
    for spec in available_commands():
        for param in load_command(spec).params:
            desc = getattr(param, "type_descriptor", None)
            if desc is not None and desc.annotation is float and param.opts[0].startswith("--"):
                found.append((spec.name, param.opts[0]))
    return found


FLOAT_OPTIONS = _float_options()


def test_the_walk_finds_the_float_options():
    assert {("train", "--lr"), ("degrade", "--blur"), ("finetune", "--lambda"), ("make-list", "--val-fraction")} <= set(FLOAT_OPTIONS)
    assert len(FLOAT_OPTIONS) >= 15


@pytest.mark.parametrize("command,option", FLOAT_OPTIONS)
def test_every_float_option_refuses_nan_and_inf(cli, ws, command, option):
    for value in ("nan", "inf", "-inf", "NaN", "Infinity"):
        line = _one_line_error(cli(ws, command, f"{option}={value}"))
        assert f"'{option}'" in line, line
    assert not ws.exists()  # refused while parsing: nothing written


def test_loss_and_method_options_refuse_nan(cli, ws, faces):
    line = _one_line_error(cli(ws, "train", "--data", faces, *FAST, "--loss", "arcface", "--loss-opt", "m=nan", "--max-steps", "1"))
    assert "m=nan" in line and "takes a float" in line
    line = _one_line_error(cli(ws, "finetune", "--method", "distill", "--from", "runs/none", "--data", faces, "--method-opt", "lam=inf"))
    assert "lam=inf" in line and "takes a float" in line


# --------------------------------------------------------------------------- 8. report temp folders
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_report_removes_temp_folders_of_killed_writers(cli, ws, tmp_path):
    from test_report import make_workspace

    make_workspace(ws)
    reports = ws / "reports"
    # A real kill -9 while the report is being built (its figures take a few seconds) ...
    killed = kill_when(lrfr_argv(ws, "report", "--name", "r"), lambda: list(reports.glob(".r.tmp-*")), timeout=120, poll=0.01)
    if killed.seen:
        assert list(reports.glob(f".r.tmp-{killed.pid}")), "the killed writer's temp folder should be there"
    # ... and, whether or not the kill landed in time, leftovers of a dead and of a live writer.
    dead, live = _dead_pid(), os.getppid()
    for n in (f".r.tmp-{dead}", f".old.old-{dead}", f".r.tmp-{live}"):
        (reports / n).mkdir(parents=True, exist_ok=True)
        (reports / n / "results.md").write_text("half\n")
    r = cli(ws, "report", "--name", "r", "--no-plots")
    assert r.exit_code == 0, r.stdout + r.stderr
    left = sorted(p.name for p in reports.iterdir() if p.name.startswith("."))
    assert left == [f".r.tmp-{live}"], left  # the running writer's folder is not touched
    assert (reports / "r" / "results.md").is_file()


# --------------------------------------------------------------------------- 6./7. signals and workers
def _train_cmd(ws: Path, faces: Path, epochs: int) -> list[str]:
    return lrfr_argv(ws, "train", "--data", str(faces), "--backbone", "tiny", "--embedding-size", "32",
                     "--loss", "softmax", "--batch-size", "4", "--workers", "2", "--device", "cpu", "--threads", "1",
                     "--epochs", str(epochs), "--checkpoint-every", "100000", "--log-every", "1", "--run", "r")


def _ignored_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigIgn line")


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_ctrl_c_at_epoch_boundaries_exits_130_and_resumes_bit_identical(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) just after an epoch's
    last step, while the old loader's workers shut down and the new ones are forked: exit 130 with
    one line, every time; the chain of resumed runs ends with the weights of an uninterrupted one.

    The run is far longer than the two interrupted stretches (30 epochs, 90 steps), so the Ctrl-C
    lands mid-run however fast the machine is: with 6 epochs a quiet CPU finished the last steps
    within the 0.3 s delay and exited 0 before the signal arrived."""
    import torch

    faces = make_identity_faces(tmp_path / "faces", 3, 4, seed=2, noise=20.0)  # 12 images: 3 steps an epoch
    ws = tmp_path / "ws"
    metrics = ws / "runs" / "r" / "metrics.jsonl"
    epochs = 30
    for n, delay in ((6, 0.0), (12, 0.3)):  # after epoch 2, then (resumed) after epoch 4, at other moments
        proc = subprocess.Popen(_train_cmd(ws, faces, epochs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.time() + 300
            checked_workers = False
            while time.time() < deadline and proc.poll() is None and _lines(metrics) < n:
                if not checked_workers:
                    kids = [p for p in descendants(proc.pid) if alive(p)]
                    for k in kids:  # the workers leave SIGINT and SIGTERM to the parent
                        try:
                            ign = _ignored_signals(k)
                        except (OSError, AssertionError):
                            continue
                        # (a worker just forked has not run its init yet: keep polling)
                        checked_workers |= bool(ign & (1 << (signal.SIGINT - 1)) and ign & (1 << (signal.SIGTERM - 1)))
                time.sleep(0.002)
            # (on a loaded machine the poll may see a later step: still a Ctrl-C mid-run, just not
            # exactly at the boundary, and the assertions below hold all the same)
            assert proc.poll() is None and _lines(metrics) >= n, f"the run ended or stalled before step {n}"
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = err.decode(errors="replace").strip()
        assert proc.returncode == 130, text
        assert text.splitlines() == ["interrupted (re-run the same command to resume)"], text
        assert checked_workers, "never saw a DataLoader worker that ignores SIGINT and SIGTERM"
        assert _json(ws / "runs" / "r" / "manifest.json")["status"] == "running"
    done = subprocess.run(_train_cmd(ws, faces, epochs), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    ref_ws = tmp_path / "ref"
    ref = subprocess.run(_train_cmd(ref_ws, faces, epochs), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    a = torch.load(ws / "runs" / "r" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(ref_ws / "runs" / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 3 * epochs
    for part in ("model", "head"):
        for k in b[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sigterm_workers_die_with_their_parent_quietly(tmp_path):
    """SIGTERM kills the parent; its DataLoader workers, here even stopped (SIGSTOP) so they can
    neither notice nor print, are killed by the kernel with it (PR_SET_PDEATHSIG). Before, they
    lived on until torch's watchdog saw the dead parent, and could print a ConnectionResetError."""

    faces = make_identity_faces(tmp_path / "faces", 3, 4, seed=2, noise=20.0)
    ws = tmp_path / "ws"
    proc = subprocess.Popen(_train_cmd(ws, faces, 500), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            kids = [p for p in descendants(proc.pid) if alive(p)]
            if len(kids) >= 2 and _lines(ws / "runs" / "r" / "metrics.jsonl") >= 1:
                workers = kids
                break
            time.sleep(0.01)
        assert workers, "never saw the workers"
        signal_all(workers, signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGTERM
        deadline = time.time() + 60
        while time.time() < deadline and any(alive(p) for p in workers):
            time.sleep(0.05)
        assert not any(alive(p) for p in workers), "workers outlived their parent"
        assert b"Traceback" not in err and b"Error" not in err, err.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        signal_all(workers, signal.SIGKILL)
        signal_all(workers, signal.SIGCONT)


# --------------------------------------------------------------------------- 5. full disk
def test_atomic_write_on_a_full_disk_names_path_and_free_space(tmp_path, monkeypatch):
    import errno

    from lrfr_cli.workspace import DiskFullError, atomic_write_text

    def full(self, data):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    target = tmp_path / "a" / "b.txt"
    with pytest.raises(DiskFullError, match=rf"no space left on the device writing {target} \(\d.* free there\)"):
        atomic_write_text(target, "x")
    assert not [p for p in target.parent.iterdir()]  # no temp file left behind


def test_failed_run_records_its_error_even_when_the_manifest_cannot_be_rewritten(tmp_path, monkeypatch):
    """The run's error goes into the manifest in place when the atomic rewrite hits the full disk
    too; before, the second ENOSPC replaced the first and the manifest said ``running``, no error."""
    from lrfr_cli import workspace as W

    art = W.Workspace(tmp_path / "ws").artifact("runs", "r")
    real = W.atomic_write_json
    with pytest.raises(W.DiskFullError):
        with art.run("train", {"lr": 0.1}, {}) as _run:
            def no_room(path, obj):  # type: ignore[no-untyped-def]
                raise W.disk_full_error(path)

            monkeypatch.setattr(W, "atomic_write_json", no_room)
            raise W.disk_full_error(art.path / "checkpoints" / "last.pt")
    monkeypatch.setattr(W, "atomic_write_json", real)
    m = _json(art.manifest_path)
    assert m["status"] == "running" and "no space left" in m["error"] and "last.pt" in m["error"]
    # The re-run resumes it (same key), and lrfr status calls it failed meanwhile.
    with art.run("train", {"lr": 0.1}, {}) as run:
        assert run.resumed
    assert _json(art.manifest_path)["status"] == "complete"


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (root only; a ballast file makes it full); skipped where mounting is not permitted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``mnt``; delete it to free space."""
    ballast = mnt / "ballast"
    ballast.write_bytes(b"\0" * max(0, os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize - leave))
    return ballast


def _noise_tree(root: Path, n: int) -> Path:
    rng = np.random.default_rng(5)
    for i in range(n):  # noise compresses badly: ~30 KB a PNG at 104 px
        d = root / f"id{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_full_disk_degrade_and_train_one_line_then_rerun_completes(cli, tmp_path, small_disk):
    src = _noise_tree(tmp_path / "noise", 16)
    ws = small_disk / "ws"
    ballast = _fill(small_disk, 200_000)
    r = cli(ws, "degrade", src, "--sizes", "104", "--no-upsample", "-j", "1", "--quiet")
    line = _one_line_error(r)
    assert "no space left on the device writing" in line and str(ws / "degraded" / "noise" / "104px") in line
    assert " free there" in line
    m = _json(ws / "degraded" / "noise" / "104px" / "manifest.json")
    assert m["status"] == "running" and "no space left" in m["error"]

    r = cli(ws, "train", "--data", src, *FAST, "--embedding-size", "32", "--max-steps", "6", "--checkpoint-every", "2", "--run", "r", "--quiet")
    line = _one_line_error(r)
    assert "no space left on the device writing" in line and "free there" in line
    m = _json(ws / "runs" / "r" / "manifest.json")
    assert m["status"] == "running" and "no space left" in m["error"]

    ballast.unlink()  # space freed: both re-runs complete
    r = cli(ws, "degrade", src, "--sizes", "104", "--no-upsample", "-j", "1", "--json")
    assert r.exit_code == 0 and r.json()["failed"] == 0, r.stdout + r.stderr
    assert len(list((ws / "degraded" / "noise" / "104px").rglob("*.png"))) == 16
    r = cli(ws, "train", "--data", src, *FAST, "--embedding-size", "32", "--max-steps", "6", "--checkpoint-every", "2", "--run", "r", "--json")
    assert r.exit_code == 0 and r.json()["steps"] == 6, r.stdout + r.stderr
    assert _json(ws / "runs" / "r" / "manifest.json")["status"] == "complete"
