"""One tree walker (issue 9, item 3): symlinked identity folders, link loops, hidden files, case of
extensions; every command that reads a tree finds the same images; list entries that leave the
data root are refused with their line number unless explicitly allowed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrfr_cli.data.datasets import ImageFileDataset, resolve_training_data
from lrfr_cli.data.images import list_images, walk_files
from lrfr_cli.data.lists import outside_root
from lrfr_cli.errors import LrfrError

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symlinks")


def _face(path: Path, seed: int, fmt: str) -> None:
    """A 112x112 'aligned face' (noise), so align passes it through and degrade accepts it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = (np.random.default_rng(seed).random((112, 112, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(path, format=fmt)


def symlinked_tree(tmp: Path) -> Path:
    """``tmp/root``: two identity folders that are links to folders elsewhere (shared storage),
    one real one; loops, hidden entries, a broken link, a linked file, mixed-case extensions."""
    store = tmp / "store"
    _face(store / "alice_real" / "a1.jpg", 1, "JPEG")
    _face(store / "alice_real" / "a2.PNG", 2, "PNG")
    _face(store / "alice_real" / "sub" / "a3.jpeg", 3, "JPEG")
    _face(store / "alice_real" / ".hidden.jpg", 4, "JPEG")
    (store / "alice_real" / "notes.txt").write_text("not an image\n")
    os.symlink(store / "alice_real", store / "alice_real" / "self")  # loop: a folder linking to itself
    _face(store / "bob_real" / "b1.JPG", 5, "JPEG")
    _face(store / "bob_real" / "b2.png", 6, "PNG")
    _face(store / "extra.jpg", 7, "JPEG")
    root = tmp / "root"
    root.mkdir()
    os.symlink(store / "alice_real", root / "alice")
    os.symlink(store / "bob_real", root / "bob")
    _face(root / "carol" / "c1.jpg", 8, "JPEG")
    _face(root / "carol" / "c2.png", 9, "PNG")
    os.symlink(store / "extra.jpg", root / "carol" / "c3.jpg")  # a linked file
    os.symlink(tmp / "nowhere.jpg", root / "carol" / "broken.jpg")  # a broken link
    os.symlink("..", root / "carol" / "up")  # loop: a folder linking to its parent (the root)
    _face(root / ".trash" / "old.jpg", 10, "JPEG")  # hidden folder
    _face(root / "carol" / ".thumb.png", 11, "PNG")  # hidden file
    return root


# Hand-made: each folder's files by name, then its sub-folders by name; loops, hidden entries and
# the broken link left out.
EXPECTED_IMAGES = [
    "alice/a1.jpg",
    "alice/a2.PNG",
    "alice/sub/a3.jpeg",
    "bob/b1.JPG",
    "bob/b2.png",
    "carol/c1.jpg",
    "carol/c2.png",
    "carol/c3.jpg",
]


@needs_symlinks
def test_walker_follows_links_guards_loops_skips_hidden(tmp_path: Path) -> None:
    root = symlinked_tree(tmp_path)
    found = list_images(root)
    # Paths stay under the root's spelling (never resolved), so relative_to works through links.
    assert [p.relative_to(root).as_posix() for p in found] == EXPECTED_IMAGES
    assert all(str(p).startswith(str(root) + os.sep) for p in found)
    every = [p.relative_to(root).as_posix() for p in walk_files(root)]
    assert every == EXPECTED_IMAGES[:2] + ["alice/notes.txt"] + EXPECTED_IMAGES[2:]
    # An extension set is matched case-insensitively.
    assert [p.name for p in list_images(root, (".png",))] == ["a2.PNG", "b2.png", "c2.png"]
    # Walking from an identity link works the same; relative_to that link too.
    assert [p.relative_to(root / "alice").as_posix() for p in list_images(root / "alice")] == ["a1.jpg", "a2.PNG", "sub/a3.jpeg"]


@needs_symlinks
def test_two_links_to_one_folder_are_both_walked(tmp_path: Path) -> None:
    """The loop guard is the path from the root, not a global 'seen' set: two identity names
    linking to the same folder both keep their images, whatever the walk order."""
    _face(tmp_path / "shared" / "x.jpg", 0, "JPEG")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path / "shared", root / "a")
    os.symlink(tmp_path / "shared", root / "b")
    assert [p.relative_to(root).as_posix() for p in list_images(root)] == ["a/x.jpg", "b/x.jpg"]


def test_unreadable_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LrfrError, match="cannot read folder"):
        walk_files(tmp_path / "missing")


@needs_symlinks
def test_make_list_degrade_align_see_the_same_images(cli, ws: Path, tmp_path: Path) -> None:
    root = symlinked_tree(tmp_path)
    n = len(EXPECTED_IMAGES)
    ml = cli(ws, "make-list", root, "--out", "linked", "--json")
    assert ml.exit_code == 0, ml.stdout + ml.stderr
    assert (ml.json()["images"], ml.json()["identities"]) == (n, 3)
    listed = sorted(ln.rsplit(" ", 1)[0] for ln in (ws / "lists" / "linked" / "train.txt").read_text().splitlines())
    assert listed == sorted(EXPECTED_IMAGES)
    # The list of a symlinked tree is inside its root: training accepts it without any option.
    ts = resolve_training_data(ws / "lists" / "linked", None, ws)
    assert len(ts) == n

    dg = cli(ws, "degrade", root, "--sizes", "16", "--workers", "1", "--json")
    assert dg.exit_code == 0, dg.stdout + dg.stderr
    assert (dg.json()["images"], dg.json()["written"], dg.json()["failed"]) == (n, n, 0)
    out = ws / "degraded" / "root" / "16px"
    assert sorted(p.relative_to(out).as_posix() for p in list_images(out)) == sorted(
        str(Path(r).with_suffix(".png").as_posix()) for r in EXPECTED_IMAGES
    )

    al = cli(ws, "align", root, "--assume-cropped", "--device", "cpu", "--json")
    assert al.exit_code == 0, al.stdout + al.stderr
    assert (al.json()["images"], al.json()["faces"], al.json()["failed"]) == (n, n, 0)
    assert len(list_images(ws / "aligned" / "root")) == n


@pytest.mark.parametrize(
    ("rel", "outside"),
    [
        ("a/1.jpg", False),
        ("./a/1.jpg", False),
        ("a/../b/1.jpg", False),
        ("..hidden/1.jpg", False),  # a name that starts with dots is not '..'
        ("..", True),
        ("../x.jpg", True),
        ("a/../../x.jpg", True),
        ("../../etc/hostname", True),
        ("/etc/hostname", True),
    ],
)
def test_outside_root_is_lexical(rel: str, outside: bool) -> None:
    assert outside_root(rel) is outside


def _bad_list(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A data root with one identity, an image outside it, and a list file naming both."""
    root = tmp_path / "faces"
    for j in range(2):
        _face(root / "id0" / f"{j}.png", j, "PNG")
    _face(tmp_path / "elsewhere" / "o.png", 9, "PNG")
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    return root, lst, tmp_path / "elsewhere" / "o.png"


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_list_entries_outside_the_root_are_refused(tmp_path: Path, kind: str) -> None:
    root, lst, outside_img = _bad_list(tmp_path)
    bad = "../../etc/hostname" if kind == "dotdot" else str(outside_img)
    lst.write_text(f"# a comment line counts\nid0/0.png 0\n{bad} 1\nid0/1.png 0\n")
    with pytest.raises(LrfrError) as e:
        resolve_training_data(lst, root, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{lst}:3: {bad!r} ")
    assert f"the data root {root}" in msg and "--allow-outside-root" in msg


def test_allow_outside_root_accepts_and_reads_them(tmp_path: Path) -> None:
    root, lst, outside_img = _bad_list(tmp_path)
    lst.write_text(f"id0/0.png 0\n../elsewhere/o.png 1\n{outside_img} 1\n")
    ts = resolve_training_data(lst, root, tmp_path, allow_outside_root=True)
    assert ts.entries == [("id0/0.png", 0), ("../elsewhere/o.png", 1), (str(outside_img), 1)]
    ds = ImageFileDataset(ts.root, ts.entries)
    want = np.asarray(Image.open(outside_img).convert("RGB"))
    for i in (1, 2):  # both spellings read the file outside the root
        assert np.array_equal(ds[2 * i][0].permute(1, 2, 0).numpy(), want)


def test_train_refuses_outside_entry_and_writes_nothing(cli, ws: Path, tmp_path: Path) -> None:
    root, lst, _ = _bad_list(tmp_path)
    lst.write_text("id0/0.png 0\n../../etc/hostname 1\n")
    r = cli(ws, "train", "--data", lst, "--data-root", root, "--backbone", "tiny", "--loss", "softmax",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--threads", "1", "--max-steps", "1", "--run", "bad")
    assert r.exit_code != 0
    out = (r.stdout + r.stderr).strip()
    assert f"{lst}:2: '../../etc/hostname' is outside the data root" in " ".join(out.split())
    assert not (ws / "runs" / "bad").exists()


def test_missing_image_names_the_list_line(tmp_path: Path) -> None:
    root, lst, _ = _bad_list(tmp_path)
    lst.write_text("id0/0.png 0\n\nid0/9.png 0\n")
    with pytest.raises(LrfrError, match=rf"{lst}:3: image .*id0/9\.png not found"):
        resolve_training_data(lst, root, tmp_path)
