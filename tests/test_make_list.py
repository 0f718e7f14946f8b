"""make-list: counts against an independent os.walk, labels, --exclude, seeded per-identity split."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from lrfr_cli.data.lists import read_list


def _walk_count(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ident in sorted(os.listdir(root)):
        n = 0
        for _dp, _dn, files in os.walk(root / ident):
            n += sum(1 for f in files if f.lower().endswith((".jpg", ".jpeg", ".png")))
        counts[ident] = n
    return counts


def _lines(path: Path) -> list[tuple[str, int]]:
    return read_list(path)


def test_counts_and_labels_match_os_walk(cli, ws, data_dir):
    root = data_dir / "celeba_subset" / "images"
    r = cli(ws, "make-list", root, "--out", "celeba", "--json")
    assert r.exit_code == 0, r.stderr
    expected = _walk_count(root)
    entries = _lines(ws / "lists" / "celeba" / "train.txt")
    assert len(entries) == sum(expected.values()) == r.json()["images"]
    labels = sorted({lab for _p, lab in entries})
    assert labels == list(range(len(expected)))  # contiguous 0..N-1
    meta = json.loads((ws / "lists" / "celeba" / "labels.json").read_text())
    assert meta["classes"] == sorted(expected)  # sorted identity order
    per_label = Counter(lab for _p, lab in entries)
    for label, ident in enumerate(meta["classes"]):
        assert per_label[label] == expected[ident]
    for rel, label in entries[:50]:
        assert rel.split("/")[0] == meta["classes"][label]
        assert (Path(meta["root"]) / rel).is_file()


def test_exclude_and_min_images(cli, ws, data_dir, tmp_path):
    root = data_dir / "celeba_subset" / "images"
    expected = _walk_count(root)
    drop = sorted(expected)[:5]
    excl = tmp_path / "exclude.txt"
    excl.write_text("# test identities\n" + "\n".join(drop) + "\nnot_a_person\n")
    r = cli(ws, "make-list", root, "--out", "x", "--exclude", excl, "--min-images", "10", "--json")
    assert r.exit_code == 0, r.stderr
    meta = json.loads((ws / "lists" / "x" / "labels.json").read_text())
    kept = [i for i in sorted(expected) if i not in drop and expected[i] >= 10]
    assert meta["classes"] == kept
    entries = _lines(ws / "lists" / "x" / "train.txt")
    assert not {p.split("/")[0] for p, _ in entries} & set(drop)
    assert len(entries) == sum(expected[i] for i in kept)
    assert r.json()["excluded_identities"] == 5
    assert r.json()["exclude_names_not_found"] == 1


def test_val_split_per_identity_and_seeded(cli, ws, data_dir):
    root = data_dir / "celeba_subset" / "images"
    expected = _walk_count(root)

    def split(name: str, seed: int) -> tuple[list, list]:
        r = cli(ws, "make-list", root, "--out", name, "--val-fraction", "0.2", "--seed", str(seed))
        assert r.exit_code == 0, r.stderr
        return _lines(ws / "lists" / name / "train.txt"), _lines(ws / "lists" / name / "val.txt")

    tr1, va1 = split("a", 1)
    tr1b, va1b = split("b", 1)
    _tr2, va2 = split("c", 2)
    assert va1 == va1b and tr1 == tr1b  # same seed, same split
    assert va1 != va2  # another seed, another split
    assert not {p for p, _ in tr1} & {p for p, _ in va1}
    assert len(tr1) + len(va1) == sum(expected.values())
    val_per = Counter(p.split("/")[0] for p, _ in va1)
    train_per = Counter(p.split("/")[0] for p, _ in tr1)
    for ident, n in expected.items():
        assert train_per[ident] >= 1  # every identity keeps training images
        assert val_per[ident] == (min(n - 1, round(n * 0.2)) if n > 1 else 0)


def test_identity_split_is_disjoint(cli, ws, data_dir):
    root = data_dir / "celeba_subset" / "images"
    r = cli(ws, "make-list", root, "--out", "open", "--val-fraction", "0.25", "--val-mode", "identities", "--json")
    assert r.exit_code == 0, r.stderr
    tr = _lines(ws / "lists" / "open" / "train.txt")
    va = _lines(ws / "lists" / "open" / "val.txt")
    assert not {p.split("/")[0] for p, _ in tr} & {p.split("/")[0] for p, _ in va}
    assert sorted({lab for _, lab in va}) == list(range(r.json()["val_identities"]))


def test_skips_non_image_files(cli, ws, tmp_path):
    from PIL import Image

    root = tmp_path / "tree"
    for ident in ("bob", "amy"):
        (root / ident).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (i, 0, 0)).save(root / ident / f"{i}.png")
    (root / "amy" / "notes.txt").write_text("hello")
    (root / "README").write_text("top-level file")
    r = cli(ws, "make-list", root, "--json")
    assert r.exit_code == 0, r.stderr
    out = r.json()
    assert out["images"] == 6 and out["identities"] == 2 and out["skipped_files"] == 2
    entries = _lines(ws / "lists" / "tree" / "train.txt")
    assert entries[0] == ("amy/0.png", 0) and entries[-1] == ("bob/2.png", 1)


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_bad_root(cli, ws, tmp_path, kind):
    target = tmp_path / "x"
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("not a folder")
    r = cli(ws, "make-list", target)
    assert r.exit_code != 0
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr + r.stdout
    assert not (ws / "lists").exists() or not any((ws / "lists").rglob("train.txt"))


def test_lfw_people_file_as_exclude_and_artifact_bookkeeping_ignored(cli, ws, tmp_path):
    from PIL import Image

    root = tmp_path / "aligned"
    for ident in ("Abel_Pacheco", "Zed", "07201"):
        (root / ident).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / ident / "a.jpg")
    for f in ("manifest.json", "landmarks.csv", "failures.csv"):
        (root / f).write_text("{}")
    people = tmp_path / "people.txt"
    people.write_text("10\n2\nAbel_Pacheco\t4\nSomeone_Else\t1\n")  # LFW people.txt layout
    r = cli(ws, "make-list", root, "--exclude", people, "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["skipped_files"] == 0 and r.json()["identities"] == 2 and r.json()["excluded_identities"] == 1


def test_fingerprint_of_a_plain_tree_is_unchanged(cli, ws, tmp_path):
    """make-list fingerprints the walker's files; on a tree without links that is exactly the set
    (and order) fingerprint_tree's own walk gives, so existing lists stay up to date."""
    from PIL import Image

    from lrfr_cli.workspace import fingerprint_tree

    root = tmp_path / "tree"
    for ident, n in (("b", 2), ("a", 3)):
        for i in range(n):
            (root / ident / "sub").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / ident / f"{i}.png")
        Image.new("RGB", (8, 8)).save(root / ident / "sub" / "z.jpg")
    (root / "a" / "notes.txt").write_text("x")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "h.png").write_bytes(b"")
    r = cli(ws, "make-list", root, "--json")
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((ws / "lists" / "tree" / "manifest.json").read_text())
    assert manifest["inputs"]["root"] == fingerprint_tree(root)
    assert manifest["inputs"]["root"]["files"] == 8


@pytest.mark.skipif(os.name == "nt", reason="needs POSIX symlinks")
def test_symlinked_identities_are_listed_and_fingerprinted(cli, ws, tmp_path):
    """Identity folders that are links (shared storage): listed, and a change inside one is seen."""
    from PIL import Image

    store, root = tmp_path / "store", tmp_path / "tree"
    root.mkdir()
    for ident in ("amy", "bob"):
        (store / ident).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(store / ident / f"{i}.png")
        os.symlink(store / ident, root / ident)
    r = cli(ws, "make-list", root, "--json")
    assert r.exit_code == 0, r.stderr
    assert (r.json()["images"], r.json()["identities"]) == (4, 2)
    assert _lines(ws / "lists" / "tree" / "train.txt") == [("amy/0.png", 0), ("amy/1.png", 0), ("bob/0.png", 1), ("bob/1.png", 1)]
    assert cli(ws, "make-list", root, "--json").json()["up_to_date"] is True
    Image.new("RGB", (8, 8), (9, 9, 9)).save(store / "bob" / "2.png")  # new image behind the link
    again = cli(ws, "make-list", root)
    assert again.exit_code != 0 and "--force" in again.stderr  # the inputs changed; not "up to date"
    assert cli(ws, "make-list", root, "--force", "--json").json()["images"] == 5
