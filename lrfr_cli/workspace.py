"""The managed workspace: artifacts, manifests, locks, atomic writes, skip-if-done.

Every command writes into an *artifact* folder of the workspace (``aligned/NAME``,
``degraded/NAME/16px``, ``lists/NAME``, ``runs/RUN`` ...). The folder's ``manifest.json`` records
how it was made: command, options, input fingerprints, package versions, git commit, status and
times. The rules that make re-runs cheap and crashes harmless:

* the *key* of an artifact is a hash of (command, options, input fingerprints); a ``complete``
  artifact with the same key is not redone (``--force`` redoes it);
* a ``running`` artifact with the same key is *resumed*: every item inside was written atomically
  (temp name, fsync, rename), so whatever exists is whole and can be kept;
* an artifact with a different key is never silently overwritten: the user chooses ``--force`` or
  another name;
* an exclusive POSIX record lock (``fcntl``) on ``.lock`` refuses a second writer; it belongs
  to the process that took it, so the kernel drops it the moment that process dies, even by
  SIGKILL, and worker processes it forked cannot keep it alive (see :func:`_acquire`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import LockedError, LrfrError, OptionsChangedError

MANIFEST = "manifest.json"
LOCK = ".lock"
DEFAULT_WORKSPACE = "./lrfr-workspace"
_VERSION_PACKAGES = ("lrfr", "torch", "torchvision", "numpy", "pillow", "opencv-python-headless", "facenet-pytorch")


# --------------------------------------------------------------------------- full disks
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(LrfrError):
    """The disk (or quota) under a path is full; the message names the path and the free space."""


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing ancestor), or None."""
    p = Path(path)
    for q in (p, *p.parents):
        try:
            return shutil.disk_usage(q).free
        except OSError:
            continue
    return None


def disk_full_error(path: str | os.PathLike[str], reclaimed: int = 0) -> DiskFullError:
    """The one line for a full disk while writing ``path``: the path, and what is free now
    (plus ``reclaimed``, the blocks of a removed partial file that a writer still holds open)."""
    free = free_bytes(path)
    if free is not None:
        free += reclaimed
    room = f"{_human_bytes(free)} free there" if free is not None else "free space unknown"
    return DiskFullError(f"no space left on the device writing {path} ({room}); free some space and re-run the same command to resume")


def is_disk_full(exc: BaseException, where: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``exc`` is a full disk: ENOSPC/EDQUOT, or (torch.save reports a failed write as an
    opaque RuntimeError) any error while the file system under ``where`` has under 64 KB left."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    if isinstance(exc, RuntimeError) and where is not None:
        free = free_bytes(where)
        return free is not None and free < 64 * 1024
    return False


# --------------------------------------------------------------------------- atomic writes
def _tmp_name(path: Path) -> Path:
    # Hidden and keeps the suffix, so PIL/cv2 still infer the format from the name.
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    On an exception the temporary file is removed, so a reader only ever sees the old file or the
    complete new one. The rename alone protects against a killed process; ``fsync`` adds
    protection against power loss. Bulk writers of many small items pass ``fsync=False`` and call
    ``os.sync()`` once before they mark their artifact complete (an fsync per image costs ~25%).
    """
    final = Path(path)
    tmp = _tmp_name(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        if fsync:
            _fsync_dir(final.parent)
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e, final.parent):
            raise
        try:  # torch.save's writer may still hold the partial file open: count its blocks as free
            held = os.stat(tmp).st_blocks * 512
        except OSError:
            held = 0
        _unlink_quietly(tmp)
        raise disk_full_error(final, held) from e
    finally:
        _unlink_quietly(tmp)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """UTF-8; a file name that was not UTF-8 (a lone surrogate, as ``os.listdir`` returns it) is
    written back as its original bytes, so a list naming it finds the file again."""
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# --------------------------------------------------------------------------- fingerprints
def fingerprint_tree(root: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]] | None = None) -> dict[str, Any]:
    """Cheap fingerprint of a set of files: relative path, size and mtime of each, hashed.

    Content hashing 500k images on every run would cost minutes; (size, mtime_ns) catches every
    realistic edit. ``files`` defaults to every regular non-hidden file below ``root``.
    """
    root = Path(root)
    if files is None:
        files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    h = hashlib.sha1()
    n = 0
    total = 0
    for f in files:
        p = Path(f)
        st = p.stat()
        rel = p.relative_to(root).as_posix() if p.is_absolute() else p.as_posix()
        # os.fsencode: a name that is not UTF-8 (Latin-1 ``caf\xe9.jpg``) hashes as its bytes.
        h.update(os.fsencode(rel) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        n += 1
        total += st.st_size
    return {"path": str(root.resolve()), "files": n, "bytes": total, "sha1": h.hexdigest()}


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha1") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks (model files and packs can be GBs)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_file(path: str | os.PathLike[str], content: bool = True) -> dict[str, Any]:
    """Fingerprint one file; by content (sha1) unless ``content=False``."""
    p = Path(path)
    st = p.stat()
    out: dict[str, Any] = {"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if content:
        out["sha1"] = file_digest(p)
        del out["mtime_ns"]  # content decides; a touch must not invalidate
    return out


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    """The lrfr source tree's commit (with ``+dirty``), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_key(command: str, options: dict[str, Any], inputs: dict[str, Any]) -> str:
    blob = json.dumps({"command": command, "options": options, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- locks
# Why POSIX record locks (``fcntl(F_SETLK)`` via ``fcntl.lockf``) and not ``flock``:
#
# A ``flock`` belongs to the open file description, which ``fork()`` shares with the child. The
# DataLoader workers of train/eval (and any other forked helper) therefore held the writer lock
# too, and when the parent was SIGKILLed (pre-emption) the orphaned workers kept it for seconds:
# the scheduler's immediate re-run was refused although the writer was dead. A record lock
# belongs to the *process* that took it: a forked child does not inherit it, whatever forked it
# (``os.fork``, a C library's fork, multiprocessing), so the lock dies exactly with its owner.
# ``flock`` + ``os.register_at_fork`` closing the descriptor in children would miss forks that do
# not run Python's fork hooks; the record lock needs no cooperation from the child.
#
# Record locks have two traps, and this module closes both:
# * closing ANY descriptor of the file releases every record lock the process holds on it, so a
#   held lock keeps its one descriptor open for the lock's whole life, and this process never
#   opens (or closes) a lock file that it already holds;
# * they never conflict within one process, so two writers in the same process (threads, or the
#   in-process test runner) would both "get" the lock; the registry ``_HELD`` below gives the
#   same exclusion inside one process that the kernel gives between processes.
_HELD: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) of a lock file -> its open descriptor
_HELD_GUARD = threading.Lock()


def _forget_locks_in_child() -> None:
    """A forked child owns none of its parent's record locks: drop the inherited bookkeeping.

    The guard is replaced, not acquired (another thread may have held it at the fork), and the
    inherited descriptors are closed; a child's close does not touch the parent's locks.
    """
    global _HELD_GUARD
    _HELD_GUARD = threading.Lock()
    fds = list(_HELD.values())
    _HELD.clear()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


@dataclass
class _Held:
    key: tuple[int, int]
    fd: int
    pid: int  # the owner; a forked child leaving the ``with`` block must not touch the fd


def _holder(fd: int) -> str:
    return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"


def _acquire(path: Path, rel: str, ws_root: Path) -> _Held:
    """Take the exclusive record lock on ``path`` or raise :class:`LockedError` at once."""

    def refuse(pid: str) -> LockedError:
        return LockedError(f"{rel} is being written by another lrfr process (pid {pid}); wait for it to finish")

    with _HELD_GUARD:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise LrfrError(f"cannot write to the workspace at {ws_root}: {e.strerror}") from e
        if st is not None and (st.st_dev, st.st_ino) in _HELD:
            # Held by this very process: opening and closing another descriptor would release it.
            raise refuse(str(os.getpid()))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError as e:
            raise LrfrError(f"cannot write to the workspace at {ws_root}: permission denied") from e
        except OSError as e:
            raise LrfrError(f"cannot write to the workspace at {ws_root}: {e.strerror}") from e
        try:
            fst = os.fstat(fd)
            key = (fst.st_dev, fst.st_ino)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise refuse(_holder(fd)) from e
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise LrfrError(
                        f"cannot lock {path}: the file system under the workspace does not support POSIX locks "
                        f"({e.strerror}); put the workspace (--workspace) on a local disk"
                    ) from e
                raise
            # The pid is for the refusal message only; the kernel, not this file, decides.
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except BaseException:
            os.close(fd)  # we hold no lock on this file, so closing releases nothing of ours
            raise
        _HELD[key] = fd
        return _Held(key, fd, os.getpid())


def _release(held: _Held) -> None:
    if held.pid != os.getpid():
        return  # a forked child: it never owned the lock, and its copy of the fd is closed
    with _HELD_GUARD:
        if _HELD.get(held.key) == held.fd:
            del _HELD[held.key]
        try:
            fcntl.lockf(held.fd, fcntl.LOCK_UN)
        finally:
            os.close(held.fd)


# --------------------------------------------------------------------------- artifacts
def _write_failed_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Record a run's error in its manifest, even on a full disk, and never mask the error.

    The atomic write needs room for a second copy; when the disk is full (the usual reason a run
    failed) the manifest is rewritten in place instead, compact, so it fits in the blocks the
    file already holds. A kill during that rewrite can leave it unreadable, which the next run
    reports ("unreadable manifest ... pass --force"); without it, a full disk left the manifest
    saying ``running`` with no word of why.
    """
    try:
        atomic_write_json(path, manifest)
        return
    except (OSError, LrfrError):
        pass
    data = (json.dumps(manifest, sort_keys=True, default=str, separators=(",", ":")) + "\n").encode()
    try:
        with open(path, "r+b") as fh:
            fh.write(data)
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        pass  # the original error is what the user must see; the re-run resumes all the same


@dataclass
class Run:
    """One command's claim on an artifact (see :meth:`Artifact.run`)."""

    artifact: "Artifact"
    manifest: dict[str, Any]
    skipped: bool = False
    resumed: bool = False
    counts: dict[str, Any] = field(default_factory=dict)

    def record(self, **counts: Any) -> None:
        """Counts/results stored in the manifest when the run completes."""
        self.counts.update(counts)


class Artifact:
    """A folder of the workspace that one command owns."""

    def __init__(self, workspace: "Workspace", rel: str):
        self.workspace = workspace
        self.rel = rel
        self.path = workspace.root / rel

    def __repr__(self) -> str:
        return f"Artifact({self.rel!r})"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, OSError) as e:
            raise LrfrError(f"{self.manifest_path}: unreadable manifest ({e}); remove the folder or pass --force") from e

    @property
    def status(self) -> str | None:
        m = self.manifest()
        return m.get("status") if m else None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock; refuses (does not wait) when another process holds it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except PermissionError as e:
            raise LrfrError(f"cannot write to the workspace at {self.workspace.root}: permission denied") from e
        except OSError as e:
            raise LrfrError(f"cannot write to the workspace at {self.workspace.root}: {e.strerror}") from e
        held = _acquire(self.path / LOCK, self.rel, self.workspace.root)
        try:
            yield
        finally:
            _release(held)

    @contextmanager
    def run(
        self,
        command: str,
        options: dict[str, Any],
        inputs: dict[str, Any],
        force: bool = False,
        clear_on_force: bool = True,
    ) -> Iterator[Run]:
        """Claim the artifact for ``command``.

        Yields a :class:`Run`; ``run.skipped`` is True when an identical complete artifact exists
        (the caller then does nothing). On normal exit the manifest is marked ``complete``; on an
        exception it stays ``running`` (with the error recorded) so the next identical command
        resumes.
        """
        key = make_key(command, options, inputs)
        with self.lock():
            old = self.manifest()
            resumed = False
            if old is not None and not force:
                if old.get("key") != key:
                    raise OptionsChangedError(
                        f"{self.rel} already exists and was made from other inputs or options; "
                        "pass --force to redo it, or choose another name"
                    )
                if old.get("status") == "complete":
                    yield Run(self, old, skipped=True, counts=dict(old.get("counts", {})))
                    return
                resumed = True
            if force and old is not None and clear_on_force:
                self._clear()
            elif resumed:
                self._remove_stale_temps()
            manifest: dict[str, Any] = {
                "artifact": self.rel,
                "command": command,
                "options": options,
                "inputs": inputs,
                "key": key,
                "status": "running",
                "started": _now(),
                "finished": None,
                "versions": package_versions(),
                "git_commit": git_commit(),
                "pid": os.getpid(),
                "counts": {},
            }
            if resumed and old is not None:
                manifest["resumed_from"] = old.get("started")
            atomic_write_json(self.manifest_path, manifest)
            run = Run(self, manifest, resumed=resumed)
            t0 = time.time()
            try:
                yield run
            except BaseException as e:
                manifest["error"] = f"{type(e).__name__}: {e}"
                manifest["counts"] = run.counts
                _write_failed_manifest(self.manifest_path, manifest)
                raise
            manifest["status"] = "complete"
            manifest["finished"] = _now()
            manifest["seconds"] = round(time.time() - t0, 3)
            manifest["counts"] = run.counts
            manifest.pop("error", None)
            atomic_write_json(self.manifest_path, manifest)

    def _remove_stale_temps(self) -> None:
        """Delete temp files a killed writer left behind (``.<stem>.tmp-<pid><suffix>``)."""
        for dirpath, _dirs, files in os.walk(self.path):
            for f in files:
                if f.startswith(".") and ".tmp-" in f:
                    try:
                        os.unlink(os.path.join(dirpath, f))
                    except OSError:
                        pass

    def _clear(self) -> None:
        for child in self.path.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


class Workspace:
    """The root folder all commands write into (``--workspace``, env ``LRFR_WORKSPACE``)."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_WORKSPACE):
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise LrfrError(f"workspace {self.root} is a file, not a folder")

    def artifact(self, *parts: str) -> Artifact:
        for p in parts:
            if not p or "/" in p or p in (".", ".."):
                raise LrfrError(f"invalid artifact name {p!r}: use a plain name without '/'")
        return Artifact(self, "/".join(parts))

    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise LrfrError(f"cannot write to the workspace at {self.root}: {e.strerror or e}") from e

    def artifacts(self) -> list[Artifact]:
        """Every artifact (folder with a manifest) below the root, sorted by path."""
        if not self.root.is_dir():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            if MANIFEST in filenames:
                rel = Path(dirpath).relative_to(self.root).as_posix()
                found.append(Artifact(self, rel))
        return found


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts: its parent has not reaped it yet).

    Used to tell a temp folder of a killed writer (safe to delete) from one a running writer is
    filling. A recycled pid makes a dead writer look alive, which only delays the clean-up.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_dead_writers_temps(folder: Path) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` / ``.NAME.old-PID`` entries of ``folder`` whose PID is dead.

    Writers that build a folder under a temporary name and swap it in (``lrfr report``) leave it
    behind when killed with SIGKILL; the next run calls this. A live writer's entries are kept.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_ENTRY.match(e.name)
        if not m or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        path = Path(e.path)
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


_TEMP_ENTRY = re.compile(r"^\..+\.(?:tmp|old)-(\d+)(?:\.[^.]*)?$")


def folder_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
    return total
