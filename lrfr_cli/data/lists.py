"""Training lists: ``rel/path label`` lines built from an identity-folder tree.

Layout expected: ``ROOT/<identity>/**/<image>``; each immediate sub-folder is one identity.
Labels are 0..N-1 in sorted identity order, so the same tree always gives the same labels.
The tree is read with :func:`.images.walk_files`, like every other command's, so symlinked
identity folders count.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LrfrError
from ..registry import check_choice
from .images import IMAGE_EXTS, walk_files

VAL_MODES = ("images", "identities")
_BOOKKEEPING = {"manifest.json", "landmarks.csv", "failures.csv"}


@dataclass
class ListResult:
    root: Path
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    classes: list[str]
    val_classes: list[str]
    excluded: list[str] = field(default_factory=list)
    too_few: list[str] = field(default_factory=list)
    skipped_files: int = 0


def read_names(path: str | os.PathLike[str]) -> set[str]:
    """Identity names, one per line; ``#`` comments and anything after the first token ignored.

    The first-token rule also accepts LFW's ``people*.txt`` / ``lfw-names.txt`` (``Name count``).
    """
    p = Path(path)
    if not p.is_file():
        raise LrfrError(f"--exclude {p}: file not found")
    rows = [line.split("#", 1)[0].split() for line in p.read_text(errors="replace").splitlines()]
    rows = [r for r in rows if r]
    if any(len(r) >= 2 for r in rows):
        # "Name count" format (LFW people files): bare integer lines are fold/count headers.
        return {r[0] for r in rows if len(r) >= 2}
    names = {r[0] for r in rows}
    return names


def build_list(
    root: str | os.PathLike[str],
    min_images: int = 1,
    exclude: Iterable[str] = (),
    val_fraction: float = 0.0,
    val_mode: str = "images",
    seed: int = 0,
    exts: tuple[str, ...] = IMAGE_EXTS,
    files: Sequence[Path] | None = None,
) -> ListResult:
    """Scan ``root`` and split it.

    ``files``: the tree's files as :func:`.images.walk_files` ``(root)`` returns them, when the
    caller has walked it already (make-list fingerprints the same set); default: walk it here.

    ``val_mode="images"`` holds out ``val_fraction`` of each identity's images (at least one stays
    in training; identities with one image contribute none): held-out images of *training*
    identities, for closed-set validation. ``"identities"`` holds out whole identities, for an
    open-set split; train and val then have their own contiguous labels.
    """
    root = Path(root)
    if min_images < 1:
        raise LrfrError(f"--min-images {min_images}: must be >= 1")
    if not 0.0 <= val_fraction < 1.0:
        raise LrfrError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    check_choice(val_mode, VAL_MODES, "--val-mode")
    exclude = set(exclude)
    identities = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    # One walk of the whole tree: the loop guard then knows ROOT itself (a link inside an identity
    # back to ROOT is a loop, not a copy of every other identity).
    files_by_id: dict[str, list[Path]] = {ident: [] for ident in identities}
    skipped_files = 0
    for p in walk_files(root) if files is None else files:
        parts = p.relative_to(root).parts
        if len(parts) == 1:
            # Top-level files of a workspace artifact (manifest, CSV reports) are bookkeeping, not data.
            skipped_files += p.name not in _BOOKKEEPING
        elif parts[0] in files_by_id:
            files_by_id[parts[0]].append(p)
    ends = tuple(e.lower() for e in exts)
    per_id: dict[str, list[str]] = {}
    excluded, too_few = [], []
    for ident in identities:
        if ident in exclude:
            excluded.append(ident)
            continue
        all_files = files_by_id[ident]
        imgs = [p.relative_to(root).as_posix() for p in all_files if p.name.lower().endswith(ends)]
        skipped_files += len(all_files) - len(imgs)
        if len(imgs) < min_images:
            too_few.append(ident)
            continue
        per_id[ident] = imgs
    if not per_id:
        raise LrfrError(
            f"{root}: no identity folder with >= {min_images} image(s) "
            f"(expected ROOT/<identity>/<image>{'/'.join(exts[:1])}, found {len(identities)} folder(s))"
        )
    rng = random.Random(seed)
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    kept = sorted(per_id)
    if val_mode == "identities" and val_fraction > 0:
        order = kept[:]
        rng.shuffle(order)
        n_val = int(round(len(order) * val_fraction))
        val_ids = sorted(order[:n_val])
        train_ids = sorted(order[n_val:])
        if not train_ids:
            raise LrfrError("--val-fraction leaves no identity for training")
        for label, ident in enumerate(train_ids):
            train += [(f, label) for f in per_id[ident]]
        for label, ident in enumerate(val_ids):
            val += [(f, label) for f in per_id[ident]]
        return ListResult(root, train, val, train_ids, val_ids, excluded, too_few, skipped_files)
    for label, ident in enumerate(kept):
        files = per_id[ident][:]
        n_val = 0
        if val_fraction > 0 and len(files) > 1:
            n_val = min(len(files) - 1, int(round(len(files) * val_fraction)))
            rng.shuffle(files)
        held = set(files[:n_val])
        train += [(f, label) for f in per_id[ident] if f not in held]
        val += [(f, label) for f in per_id[ident] if f in held]
    return ListResult(root, train, val, kept, kept if val else [], excluded, too_few, skipped_files)


def format_list(entries: Iterable[tuple[str, int]]) -> str:
    return "".join(f"{path} {label}\n" for path, label in entries)


def read_list_text(path: Path) -> str:
    """A list file's text; bytes that are not UTF-8 become lone surrogates (``surrogateescape``).

    That is the decoding Python applies to file names, so a list written by make-list for a tree
    holding a Latin-1 name (``caf\\xe9.jpg``, usual on old shares) names that very file again when
    read back, and :func:`~lrfr_cli.workspace.atomic_write_text` writes such a name back as its
    original bytes. A stray byte that names no file is caught where each entry is checked, with
    ``file:line`` (see :func:`describe_name`).
    """
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as e:
        raise LrfrError(f"cannot read list file {path}: {e.strerror or e}") from None


def has_undecodable(text: str) -> bool:
    """Whether ``text`` carries bytes that were not UTF-8 (lone surrogates from ``surrogateescape``)."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def describe_name(text: str) -> str:
    """``text`` fit for a terminal: undecodable bytes shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_list_lines(path: str | os.PathLike[str]) -> list[tuple[int, str, int]]:
    """Parse a ``rel/path label`` file into ``(line number, path, label)``; errors name ``file:line``.

    The line numbers let later checks (missing image, path outside the data root) point at the
    line to fix.
    """
    p = Path(path)
    if not p.is_file():
        raise LrfrError(f"list file {p} not found")
    out = []
    for i, line in enumerate(read_list_text(p).splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise LrfrError(f"{p}:{i}: expected 'rel/path label', got {_shown(line)}")
        try:
            label = int(parts[1])
        except ValueError:
            raise LrfrError(f"{p}:{i}: label {_shown(parts[1])} is not an integer") from None
        if label < 0:
            raise LrfrError(f"{p}:{i}: label {label} is negative")
        out.append((i, parts[0], label))
    return out


def _shown(text: str) -> str:
    """A list fragment quoted for an error, saying so when it holds bytes that are not UTF-8."""
    note = " (not valid UTF-8)" if has_undecodable(text) else ""
    return f"'{describe_name(text)[:120]}'" + note


def read_list(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Parse a ``rel/path label`` file; errors name ``file:line``."""
    return [(rel, label) for _, rel, label in read_list_lines(path)]


def outside_root(rel: str) -> bool:
    """Whether list path ``rel`` leaves the folder it is relative to: absolute, or ``..`` escapes.

    The test is lexical (``os.path.normpath``), on purpose: an identity folder inside the root
    that is a symlink to shared storage elsewhere is how big sets are laid out, and must stay
    allowed; resolving links would refuse it. What a list entry cannot do is name a file outside
    the root by its own spelling (``../../etc/hostname``, ``/etc/hostname``).
    """
    if os.path.isabs(rel):
        return True
    norm = os.path.normpath(rel)
    return norm == os.pardir or norm.startswith(os.pardir + os.sep)


def check_inside_root(list_path: str | os.PathLike[str], lines: Iterable[tuple[int, str, int]], root: Path) -> None:
    """Refuse the first entry of a list that leaves ``root`` (see :func:`outside_root`)."""
    name = str(list_path)
    for lineno, rel, _ in lines:
        if outside_root(rel):
            what = "is an absolute path, not relative to" if os.path.isabs(rel) else "is outside"
            raise LrfrError(
                f"{name}:{lineno}: {rel!r} {what} the data root {root}; pass --allow-outside-root to allow it"
            )


def labels_json(result: ListResult) -> str:
    return json.dumps(
        {
            "root": str(result.root.resolve()),
            "classes": result.classes,
            "val_classes": result.val_classes,
            "num_classes": len(result.classes),
        },
        indent=2,
    ) + "\n"
