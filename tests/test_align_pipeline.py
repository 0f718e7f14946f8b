"""The tree walk, the journal and the decode-pool defaults of ``align_tree`` (issue 9)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrfr_cli.align.journal import JOURNAL, Journal, read_journal
from lrfr_cli.align.pipeline import LARGE_PHOTO_PIXELS, align_tree, default_workers
from lrfr_cli.data.images import list_images, load_rgb

from helpers import kill_when


def _lfw_tree(data_dir: Path, dst: Path, n: int, step: int = 97) -> list[str]:
    root = data_dir / "lfw/lfw-deepfunneled"
    rels = []
    for person in sorted(root.iterdir())[::step][:n]:
        f = min(person.iterdir())
        rel = f"{person.name}/{f.name}"
        (dst / person.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / rel)
        rels.append(rel)
    return rels


def test_default_workers_follow_photo_size(tmp_path: Path) -> None:
    small = tmp_path / "small.jpg"
    Image.new("RGB", (250, 250)).save(small)
    big = tmp_path / "big.jpg"
    side = int(np.sqrt(LARGE_PHOTO_PIXELS)) + 50  # just over the threshold
    Image.new("RGB", (side, side)).save(big)
    assert default_workers([small] * 5, cores=2) == 0
    assert default_workers([big] * 5, cores=2) == 1
    assert default_workers([big] * 5, cores=8) == 7
    assert default_workers([big] * 5, cores=1) == 1  # large photos always get a decode process
    assert default_workers([tmp_path / "missing.jpg"], cores=4) == 0  # nothing readable: decode in place
    assert default_workers([small, big, big], cores=4) == 3  # the median decides


def test_journal_one_path_and_empty_faces_are_redone(tmp_path: Path) -> None:
    """Aligned faces (arrays) and passthrough copies (bytes) go through one commit; an empty file is not done."""
    from lrfr_cli.align.aligner import FaceRecord

    out = tmp_path / "out"
    face = np.full((112, 112, 3), 120, np.uint8)
    Image.fromarray(face).save(tmp_path / "copy.png")
    with Journal(out, {"k": 1}) as j:
        j.commit("a/x.jpg", None, [(FaceRecord("a/x.jpg", "a/x.jpg", 0, 1, "ok"), face)])
        j.commit("a/y.png", None, [(FaceRecord("a/y.png", "a/y.png", 0, 1, "passthrough"), (tmp_path / "copy.png").read_bytes())])
        j.commit("a/z.jpg", "no face found", [])
        assert j.done("a/x.jpg")  # files are in place at commit; the line waits for flush()
        assert read_journal(out / JOURNAL)[1] == {}
    config, entries = read_journal(out / JOURNAL)
    assert config == {"k": 1} and set(entries) == {"a/x.jpg", "a/y.png", "a/z.jpg"}
    assert (out / "a/y.png").read_bytes() == (tmp_path / "copy.png").read_bytes()
    assert np.abs(load_rgb(out / "a/x.jpg").astype(int) - 120).max() <= 2  # JPEG of a flat image
    assert entries["a/z.jpg"]["reason"] == "no face found"
    j2 = Journal(out, {"k": 1})
    assert j2.done("a/x.jpg") and j2.done("a/z.jpg") and not j2.done("a/missing.jpg")
    (out / "a/x.jpg").write_bytes(b"")  # what a power cut can leave of a face not yet synced
    assert not j2.done("a/x.jpg")
    with pytest.raises(Exception, match="other options"):
        Journal(out, {"k": 2})


@pytest.mark.slow
def test_threads_option_restores_torch_and_timings_add_up(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "lfw"
    _lfw_tree(data_dir, src, 3)
    before = torch.get_num_threads()
    res = align_tree(src, tmp_path / "out", threads=1, workers=-1)
    assert torch.get_num_threads() == before
    assert res.faces == 3 and res.threads == 1 and res.workers == 0  # LFW-sized photos: decoded in place
    assert {"decode", "pnet", "rnet", "onet", "warp", "write", "reports"} <= set(res.timings)
    assert 0 < sum(res.timings.values()) <= res.seconds * 1.05 + 0.05
    with pytest.raises(Exception, match="--threads"):
        align_tree(src, tmp_path / "out2", threads=-1)


_CHILD = """
import sys
from lrfr_cli.align.pipeline import align_tree
align_tree(sys.argv[1], sys.argv[2], batch_size=2, workers=0, threads=1)
"""


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_completes(data_dir: Path, tmp_path: Path) -> None:
    """SIGKILL while faces are being written: every journalled face exists, a resume finishes the rest
    without rewriting what was journalled, and the result equals an uninterrupted run."""
    src = tmp_path / "lfw"
    rels = _lfw_tree(data_dir, src, 24, step=31)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = kill_when([sys.executable, "-c", _CHILD, str(src), str(out)], lambda: len(read_journal(out / JOURNAL)[1]) >= 4,
                       timeout=300, poll=0.05, env=env)
    assert killed.seen, "the run finished before it could be killed; use more photos"
    _, entries = read_journal(out / JOURNAL)
    assert 4 <= len(entries) < len(rels)
    for e in entries.values():
        for f in e["faces"]:
            assert load_rgb(out / f["path"]).shape == (112, 112, 3)
    kept = {f["path"]: (out / f["path"]).stat().st_mtime_ns for e in entries.values() for f in e["faces"]}
    res = align_tree(src, out, batch_size=4, threads=1)
    assert res.already_done >= len(entries) and res.faces == len(rels) and not res.failures
    for p, t in kept.items():
        assert (out / p).stat().st_mtime_ns == t
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    # the same faces as one uninterrupted run (same recipe, same pixels)
    ref = align_tree(src, tmp_path / "ref", batch_size=4, threads=1)
    assert {r.path for r in ref.records} == {r.path for r in res.records}
    for rec in ref.records:
        assert np.array_equal(load_rgb(tmp_path / "ref" / rec.path), load_rgb(out / rec.path)), rec.path
    assert len(list_images(out)) == len(rels)
    lines = (out / JOURNAL).read_text().splitlines()
    assert sum(1 for ln in lines if '"config"' in ln) == 1 and json.loads(lines[0])["config"]["size"] == 112


def test_detector_threads_leave_the_decoders_their_cores() -> None:
    from lrfr_cli.align.pipeline import detector_threads

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert detector_threads(3, 2, "cpu", cores=4) == 3  # asked for: taken as given
        assert detector_threads(0, 0, "cpu", cores=4) == 4  # no decode processes: torch's setting
        assert detector_threads(0, 1, "cpu", cores=4) == 3
        assert detector_threads(0, 3, "cpu", cores=4) == 1
        assert detector_threads(0, 8, "cpu", cores=4) == 1  # never below one
        assert detector_threads(0, 1, "cpu", cores=16) == 4  # never above torch's setting
        assert detector_threads(0, 2, "cuda:0", cores=4) == 4  # the GPU does the work
    finally:
        torch.set_num_threads(old)
