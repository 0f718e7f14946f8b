"""`lrfr sr`: super-resolved copies equal the SR network applied to eval's degradation, the contact
sheet shows LR/bicubic/SR/HR tiles of those very images, an interrupted run resumes, bad input
is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_sr_eval import make_recogniser, make_sr_run

from lrfr_cli.data.degrade import DegradeSpec, degrade_array
from lrfr_cli.data.images import load_rgb


@pytest.fixture
def folder(data_dir: Path, tmp_path: Path) -> Path:
    src = data_dir / "celeba_subset" / "images"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    root = tmp_path / "faces"
    for d in sorted(p for p in src.iterdir() if p.is_dir())[:2]:
        (root / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.jpg"))[:3]:
            shutil.copy(f, root / d.name / f.name)
    return root


def _expected(net: torch.nn.Module, img: np.ndarray, size: int) -> np.ndarray:
    lr = torch.from_numpy(degrade_array(img, DegradeSpec(size))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return torch.round(net(lr).clamp(0, 1) * 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def _assert_network_pixels(got: np.ndarray, want: np.ndarray) -> None:
    """uint8 faces from the SR network run in another batch composition (the command: 6 faces per
    forward; ``_expected``: one), so equal up to where fp32 rounding lands on a .5 grey level.

    The kernels differ by batch shape and CPU, so the sums of the three convolutions (243, 64 and
    800 products) come out in another order: an error of about sqrt(n)·eps·Σ|terms| ≈ 30 · 6e-8 ·
    40 ≈ 1e-4 of the [0, 1] range at worst, 0.02 grey levels. A value moves only when its error
    crosses a rounding edge: by one level, for about that fraction of values (≤ 2 %). A wrong
    degradation or a skipped network moves most values by several levels.
    """
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, diff.max()
    assert (diff > 0).mean() <= 0.02, (diff > 0).mean()


def test_sr_writes_the_network_output_and_a_contact_sheet(cli, ws, folder) -> None:
    net = make_sr_run(ws)
    r = cli(ws, "sr", folder, "--model", "runs/srfake", "--lr-size", "16", "--out", "faces", "--sheet", "3", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    d = r.json()
    rels = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    assert d["written"] == len(rels) == 6 and d["failed"] == 0
    out = ws / "sr" / "faces" / "16px"
    for rel in rels:
        got = load_rgb(out / Path(rel).with_suffix(".png"))
        _assert_network_pixels(got, _expected(net, load_rgb(folder / rel), 16))

    sheet = np.asarray(Image.open(d["contact_sheet"]).convert("RGB"))
    pad, head, foot, w = 4, 30, 14, 112
    assert sheet.shape == (head + 3 * (w + foot + pad) + pad, 4 * (w + pad) + pad, 3)
    first = load_rgb(folder / rels[0])  # rows are spread over the folder; the first row is its first image
    tile = lambda c: sheet[head : head + w, pad + c * (w + pad) : pad + c * (w + pad) + w]  # noqa: E731
    np.testing.assert_array_equal(tile(3), first)
    _assert_network_pixels(tile(2), _expected(net, first, 16))
    np.testing.assert_array_equal(tile(1), degrade_array(first, DegradeSpec(16)))
    small = degrade_array(first, DegradeSpec(16, upsample=False))
    np.testing.assert_array_equal(tile(0), np.asarray(Image.fromarray(small).resize((w, w), Image.NEAREST)))

    again = cli(ws, "sr", folder, "--model", "runs/srfake", "--lr-size", "16", "--out", "faces", "--sheet", "3", "--json").json()
    assert again["up_to_date"] is True


def test_an_interrupted_sr_run_resumes(cli, ws, folder) -> None:
    make_sr_run(ws)
    args = ("sr", folder, "--model", "srfake", "--lr-size", "16", "--out", "faces", "--sheet", "0", "--json")
    assert cli(ws, *args).exit_code == 0
    art = ws / "sr" / "faces" / "16px"
    m = json.loads((art / "manifest.json").read_text())
    m["status"] = "running"  # as a killed run leaves it
    (art / "manifest.json").write_text(json.dumps(m))
    victims = sorted(art.rglob("*.png"))[:2]
    for v in victims:
        v.unlink()
    d = cli(ws, *args).json()
    assert d["written"] == 2 and d["already_present"] == 4 and all(v.is_file() for v in victims)


def test_bad_input_is_one_line(cli, ws, folder) -> None:
    make_sr_run(ws)
    make_recogniser(ws)
    r = cli(ws, "sr", folder, "--model", "runs/rec", "--lr-size", "16")
    out = r.stdout + r.stderr
    assert r.exit_code != 0 and "runs/rec is a face-recognition run, not a super-resolution one" in " ".join(out.split())
    assert len(out.strip().splitlines()) == 1
    r = cli(ws, "sr", folder, "--model", "srfake", "--lr-size", "8", "--sheet", "0")
    assert r.exit_code == 0 and "trained at 16 px; applying it at 8 px" in " ".join((r.stdout + r.stderr).split())
    empty = folder.parent / "empty"
    empty.mkdir()
    r = cli(ws, "sr", empty, "--model", "srfake")
    assert r.exit_code != 0 and "no images found" in r.stdout + r.stderr
