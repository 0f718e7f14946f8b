"""insightface ``.bin`` verification packs (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin`` ...): read
them without running any code a file may carry, decode their faces, and write new ones.

The format is a pickle of ``(bins, issame)``: ``bins`` holds ``2N`` encoded images (JPEG or PNG
bytes of aligned 112×112 faces), the two faces of pair ``i`` at ``2i`` and ``2i + 1``; ``issame``
holds the ``N`` labels (True = same person), as a list of bools or a numpy bool array.

**No pickle code runs.** A pickle is a program: ``pickle.load`` imports whatever module a file
names and calls it (a ``__reduce__`` payload runs a shell command that way). :class:`_SafeUnpickler`
answers every import request itself: the few names a pack legitimately needs are mapped to inert
stand-ins defined here (no numpy function is ever called while reading), and any other name is
refused before anything is imported. The stand-ins are checked afterwards: a numpy array must be
a one-dimensional bool array whose raw bytes are all 0 or 1.

What a pack may contain, and why each is allowed:

* bytes, lists, tuples, bools: the format itself;
* ``_codecs.encode(text, "latin1")``: how Python 3 writes ``bytes`` at pickle protocol 2;
* ``numpy.core.multiarray._reconstruct`` + ``numpy.ndarray`` + ``numpy.dtype`` (and numpy 2's
  ``numpy._core`` spelling): how a numpy array pickles at protocols 0-4;
  ``numpy.core.numeric._frombuffer`` at protocol 5; ``numpy.core.multiarray.scalar``: a list of
  ``numpy.bool_`` labels. Only the bool dtype (``b1``) is accepted.

Packs written by Python 2 hold their images as ``str``; they are read with ``encoding="bytes"``,
which turns those into ``bytes`` (Python 3 packs are unaffected by it).

**Channel order.** The images are stored as their writer encoded them. insightface's packs (and
the ones ``lrfr make-bin`` writes) are ordinary JPEG/PNG files of the true-colour picture, so
decoding gives RGB, which is also what insightface's loader (``mx.image.imdecode``) hands its
networks. A pack written by encoding RGB arrays with OpenCV (which assumes BGR) has red and blue
swapped inside the file: read it with ``channels="bgr"`` to swap them back.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LrfrError

CHANNELS = ("rgb", "bgr")
CHANNELS_HELP = ("channel order of the pack's encoded images: rgb (a normal JPEG/PNG of the face, "
                 "as insightface's packs and lrfr make-bin write them) or bgr (red and blue swapped "
                 "in the file, as when RGB arrays were encoded with OpenCV)")
PICKLE_PROTOCOL = 4  # readable by every Python 3 insightface loader (pickle.load)


class BinFormatError(LrfrError):
    """A ``.bin`` that is not a verification pack (or asks to run code)."""


# --------------------------------------------------------------------------- inert stand-ins
_NDARRAY = object()  # stands for numpy.ndarray in _reconstruct(ndarray, (0,), b"b"); has no state to set


@dataclass
class _DtypeStub:
    """``numpy.dtype(code, align, copy)`` and its ``__setstate__``, recorded, never built."""

    code: Any
    align: Any = False
    copy: Any = True
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def is_bool(self) -> bool:
        code = self.code.decode("latin1") if isinstance(self.code, (bytes, bytearray)) else self.code
        return code in ("b1", "?", "bool")


@dataclass
class _ArrayStub:
    """``numpy.core.multiarray._reconstruct(...)`` and its ``__setstate__`` (version, shape, dtype,
    fortran order, raw bytes), recorded and turned into a real array only after checking."""

    state: Any = None
    dtype: Any = None
    shape: Any = None
    raw: Any = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise BinFormatError("a numpy array in the pack has an unexpected pickled state")
        _, self.shape, self.dtype, _fortran, self.raw = state if len(state) == 5 else (None, *state)


@dataclass
class _ScalarStub:
    """``numpy.core.multiarray.scalar(dtype, raw)``: one ``numpy.bool_``."""

    dtype: Any
    raw: Any = None


def _reconstruct(cls: Any, shape: Any, code: Any) -> _ArrayStub:
    if cls is not _NDARRAY:
        raise BinFormatError("a numpy array in the pack is of another class than ndarray")
    return _ArrayStub()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> _ArrayStub:
    return _ArrayStub(dtype=dtype, shape=shape, raw=bytes(buf) if isinstance(buf, (bytes, bytearray)) else buf)


def _scalar(dtype: Any, raw: Any = None) -> _ScalarStub:
    return _ScalarStub(dtype, raw)


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(text, "latin1")``: Python 3's spelling of bytes at protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise BinFormatError("the pack calls _codecs.encode with something other than text and 'latin1'")
    return text.encode("latin1")


def _dtype(code: Any, align: Any = False, copy: Any = True) -> _DtypeStub:
    return _DtypeStub(code, align, copy)


_NUMPY_CORE = ("numpy.core", "numpy._core")
_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    **{(f"{core}.multiarray", "_reconstruct"): _reconstruct for core in _NUMPY_CORE},
    **{(f"{core}.multiarray", "scalar"): _scalar for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): _frombuffer for core in _NUMPY_CORE},
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the names in :data:`_ALLOWED`, to stand-ins; imports nothing."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            target = _ALLOWED[(module, name)]
        except KeyError:
            raise BinFormatError(f"refused: the pickle asks for {module}.{name} (a .bin may hold only bytes, lists, "
                                 "tuples, bools and numpy bool arrays; nothing was run)") from None
        if target is _NDARRAY:
            return target
        # a fresh wrapper per request: a BUILD opcode aimed at it cannot alter the module's functions
        return lambda *args: target(*args)

    def persistent_load(self, pid: Any) -> Any:
        raise BinFormatError("refused: the pickle uses persistent ids (not a .bin verification pack)")


# --------------------------------------------------------------------------- checks
def _bool_array(a: _ArrayStub) -> np.ndarray:
    if not isinstance(a.dtype, _DtypeStub) or not a.dtype.is_bool():
        code = getattr(a.dtype, "code", a.dtype)
        raise BinFormatError(f"issame is a numpy array of dtype {code!r}; only bool arrays are accepted")
    raw = a.raw
    if isinstance(raw, str):  # protocol 0-2 pickles of Python 2 read as text
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray)):
        raise BinFormatError("issame: a numpy bool array without its raw bytes")
    shape = tuple(a.shape) if isinstance(a.shape, (tuple, list)) else (a.shape,)
    if len(shape) != 1 or not isinstance(shape[0], int) or shape[0] != len(raw):
        raise BinFormatError(f"issame: a numpy bool array of shape {shape} holding {len(raw)} bytes (expected one dimension)")
    arr = np.frombuffer(bytes(raw), dtype=np.uint8)
    if arr.size and arr.max() > 1:
        raise BinFormatError("issame: a numpy bool array with bytes other than 0 and 1")
    return arr.astype(bool)


def _labels(issame: Any) -> np.ndarray:
    if isinstance(issame, _ArrayStub):
        return _bool_array(issame)
    if not isinstance(issame, (list, tuple)):
        raise BinFormatError(f"issame is a {type(issame).__name__}; expected a list of bools or a numpy bool array")
    out = np.empty(len(issame), dtype=bool)
    for i, v in enumerate(issame):
        if isinstance(v, _ScalarStub):
            raw = v.raw.encode("latin1") if isinstance(v.raw, str) else v.raw
            if not isinstance(v.dtype, _DtypeStub) or not v.dtype.is_bool() or raw not in (b"\x00", b"\x01"):
                raise BinFormatError(f"issame[{i}] is a numpy scalar that is not a bool")
            v = raw == b"\x01"
        if not isinstance(v, bool):
            raise BinFormatError(f"issame[{i}] is a {type(v).__name__}; expected a bool")
        out[i] = v
    return out


def _images(bins: Any) -> list[bytes]:
    if not isinstance(bins, (list, tuple)):
        raise BinFormatError(f"bins is a {type(bins).__name__}; expected a list of encoded images (bytes)")
    out: list[bytes] = []
    for i, b in enumerate(bins):
        if isinstance(b, _ArrayStub) and isinstance(b.raw, (bytes, bytearray)) and getattr(b.dtype, "code", None) in ("u1", b"u1"):
            b = bytes(b.raw)  # some writers keep the encoded bytes as a uint8 array
        if isinstance(b, bytearray):
            b = bytes(b)
        if not isinstance(b, bytes):
            raise BinFormatError(f"bins[{i}] is a {type(b).__name__}; expected the bytes of a JPEG or PNG file")
        out.append(b)
    return out


# --------------------------------------------------------------------------- reading
@dataclass
class BinPack:
    """A verification pack in memory: encoded faces and pair labels (pair ``i`` = images ``2i, 2i+1``)."""

    path: Path
    bins: list[bytes]
    issame: np.ndarray
    sha1: str = ""
    pairs_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    def __len__(self) -> int:
        return len(self.issame)

    def folds(self, n_folds: int = 10) -> np.ndarray:
        """insightface's folds: ``KFold(10, shuffle=False)``, i.e. contiguous blocks of pairs, the
        first ``N % 10`` blocks one pair longer (the packs list pairs fold by fold, as LFW does)."""
        n = len(self.issame)
        k = min(n_folds, n)
        sizes = np.full(k, n // k, dtype=np.int64)
        sizes[: n % k] += 1
        return np.repeat(np.arange(k), sizes)

    def decode(self, i: int, channels: str = "rgb") -> np.ndarray:
        """Image ``i`` as HxWx3 uint8 RGB (``channels="bgr"``: red and blue swapped back)."""
        return decode_image(self.bins[i], channels, f"{self.path.name} image {i}")


def decode_image(data: bytes, channels: str = "rgb", what: str = "image") -> np.ndarray:
    """JPEG/PNG bytes → HxWx3 uint8 RGB, by OpenCV as insightface's mxnet decoder does."""
    import cv2

    from .images import ImageReadError

    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.size == 0:
        raise ImageReadError(f"{what}: not a decodable JPEG/PNG ({len(data)} bytes)")
    if channels == "rgb":  # OpenCV decodes to BGR; the file's colours are true RGB
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def check_channels(channels: str, flag: str = "--bin-channels") -> str:
    c = channels.strip().lower()
    if c not in CHANNELS:
        raise LrfrError(f"{flag} {channels!r}: choose one of {', '.join(CHANNELS)}")
    return c


def file_sha1(path: Path) -> str:
    from ..workspace import file_digest

    return file_digest(path, "sha1")


def read_bin(path: str | os.PathLike[str]) -> BinPack:
    """Read and check a ``.bin`` without running code from it (:class:`_SafeUnpickler`)."""
    p = Path(path)
    if not p.is_file():
        raise BinFormatError(f"{p}: no such .bin file")
    data = p.read_bytes()
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except BinFormatError as e:
        raise BinFormatError(f"{p}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, OverflowError, MemoryError) as e:
        raise BinFormatError(f"{p}: not a readable .bin pickle ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFormatError(f"{p}: expected a pickled (bins, issame) pair, found a {type(obj).__name__}")
    try:
        bins, issame = _images(obj[0]), _labels(obj[1])
    except BinFormatError as e:
        raise BinFormatError(f"{p}: {e}") from None
    if len(issame) == 0:
        raise BinFormatError(f"{p}: no pairs")
    if len(bins) != 2 * len(issame):
        raise BinFormatError(f"{p}: {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)}: two per pair)")
    return BinPack(p, bins, issame, hashlib.sha1(data).hexdigest())


# --------------------------------------------------------------------------- writing
def write_bin(path: str | os.PathLike[str], bins: Sequence[bytes], issame: Iterable[bool]) -> Path:
    """Write a pack insightface's ``load_bin`` reads: a plain pickle of ``(list of bytes, list of
    bool)``, atomically (a crash leaves no half-written file under the final name)."""
    from ..workspace import atomic_path

    labels = [bool(s) for s in issame]
    images = [bytes(b) for b in bins]
    if len(images) != 2 * len(labels):
        raise ValueError(f"{len(images)} images for {len(labels)} pairs")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump((images, labels), fh, protocol=PICKLE_PROTOCOL)
    return out


__all__ = ["CHANNELS", "CHANNELS_HELP", "BinFormatError", "BinPack", "check_channels", "decode_image", "file_sha1",
           "read_bin", "write_bin"]
