"""``lrfr make-bin``: an insightface ``.bin`` verification pack from LFW-style pairs of aligned faces.

The pack is what ``lrfr train --val-bin`` and ``lrfr eval --dataset bin`` read, and what
insightface's own ``load_bin`` (and the toolkits built on it) read: a plain pickle of
``(list of 2N encoded images, list of N bools)``, the faces of pair ``i`` at ``2i`` and ``2i + 1``
in the pairs file's order, so its folds are the file's folds (10 contiguous blocks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import LrfrError
from ..registry import check_choice
from . import _options as opt
from ._common import handle_errors, state, workspace
from ._deprecated import old_spelling, prefer, require

ENCODINGS = ("auto", "jpg", "png")


def _encode(path: Path, size: int, encoding: str, quality: int) -> tuple[bytes, bool]:
    """``(bytes stored for this face, whether it was resized)``. ``auto`` keeps a ``size``-square
    JPEG/PNG file byte for byte (no second lossy encode); anything else is decoded, fitted to
    ``size`` and encoded as ``jpg`` (``auto``'s choice too) or ``png``."""
    import cv2
    import numpy as np

    from ..data.binfile import decode_image
    from ..data.images import ImageReadError, load_rgb
    from ..data.sources import fit_face

    raw = path.read_bytes()
    img = None
    if encoding == "auto" and path.suffix.lower() in (".jpg", ".jpeg", ".png"):
        try:
            img = decode_image(raw, "rgb", str(path))
        except ImageReadError:
            img = None
        if img is not None and img.shape[:2] == (size, size):
            return raw, False
    if img is None:
        try:
            img = load_rgb(path)
        except ImageReadError as e:
            raise LrfrError(f"{path}: {e}") from None
    resized = img.shape[:2] != (size, size)
    if resized:
        img = fit_face(img, size)
    bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)  # OpenCV encodes BGR: the file gets true colours
    params = [cv2.IMWRITE_PNG_COMPRESSION, 3] if encoding == "png" else [cv2.IMWRITE_JPEG_QUALITY, quality]
    ok, buf = cv2.imencode(".png" if encoding == "png" else ".jpg", bgr, params)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 HxWx3 array
        raise LrfrError(f"{path}: could not encode the face")
    return buf.tobytes(), resized


@handle_errors
def make_bin(
    pairs: Path = typer.Option(..., "--pairs", "-p", help="Pairs file: LFW's pairs.txt format ('name i j' / 'name1 i name2 j', header 'FOLDS N' or none) or 'path1 path2 0|1' lines."),
    root: Path | None = typer.Option(None, "--root", help="Required: the folder of ALIGNED faces the pairs name (e.g. aligned/NAME from `lrfr align`, or ROOT/<Name>/<Name>_0001.jpg); LFW names are also found as .png."),
    out: Path = typer.Option(..., "--out", "-o", help="The .bin to write (replaced atomically if it exists)."),
    size: int = typer.Option(112, "--size", min=16, help="Face size in pixels; faces of another size are resized (with a warning: align them first)."),
    encoding: str = typer.Option("auto", "--encode", help="auto (keep SIZE-square JPEG/PNG files byte for byte, encode others as JPEG), jpg (re-encode every face as JPEG) or png (lossless)."),
    quality: opt.JpegQuality = 95,
    old_root: Annotated[Path | None, old_spelling("-r", "--root")] = None,
    old_quality: Annotated[int | None, old_spelling("--quality", "--jpeg-quality")] = None,
) -> None:
    """Write an insightface .bin verification pack from pairs of aligned faces.

    Readable by insightface's load_bin (a plain pickle of (list of bytes, list of bool)), by `lrfr eval --dataset bin --data OUT.bin` and by `lrfr train --val-bin OUT.bin`. Faces are stored as true-colour JPEG/PNG (read them with --bin-channels rgb, the default).

    Example: lrfr make-bin --pairs $LRFR_DATA/lfw/pairs.txt --root aligned/lfw --out lfw.bin
    """
    root = require(prefer("make-bin", root, old_root, new_flag="--root", old_flag="-r", why="-r is --runs in lrfr report"), "--root")
    quality = prefer("make-bin", quality, old_quality, new_flag="--jpeg-quality", old_flag="--quality", default=95,
                     why="--quality is the image-quality measure in lrfr train")
    from ..data.binfile import write_bin
    from ..protocols.lfw import read_pairs, validation_pairs

    st = state()
    encoding = encoding.strip().lower()
    check_choice(encoding, ENCODINGS, "--encode")
    ws_root = workspace().root
    if not root.exists() and not root.is_absolute() and (ws_root / root).is_dir():
        root = ws_root / root  # a workspace artifact such as aligned/NAME
    if not root.is_dir():
        raise LrfrError(f"--root {root}: no such folder")
    if out.suffix.lower() != ".bin":
        raise LrfrError(f"--out {out}: name the file NAME.bin (eval names its record after the file)")
    triples = validation_pairs(pairs, root)  # every image checked before anything is written
    _, n_folds = read_pairs(pairs)
    cache: dict[Path, bytes] = {}
    resized: set[Path] = set()
    bins: list[bytes] = []
    with st.progress(f"pack {out.name}", total=2 * len(triples)) as progress:
        for a, b, _ in triples:
            for p in (a, b):
                if p not in cache:
                    cache[p], was = _encode(p, size, encoding, quality)
                    if was:
                        resized.add(p)
                bins.append(cache[p])
                progress(1)
    issame = [s for _, _, s in triples]
    write_bin(out, bins, issame)
    if resized:
        st.warn(f"{len(resized)} of {len(cache)} faces were not {size}x{size} and were resized; a pack holds aligned faces (run `lrfr align` first)")
    n = len(issame)
    data: dict[str, Any] = {"command": "make-bin", "path": str(out.resolve()), "pairs": n, "same": int(sum(issame)),
                            "images": len(bins), "unique_images": len(cache), "resized": len(resized),
                            "pairs_file_folds": n_folds, "bytes": out.stat().st_size}
    note = "" if n_folds in (1, 10) and (n_folds == 1 or n % 10 == 0) else f" (note: eval uses 10 contiguous folds; the pairs file has {n_folds})"
    st.summary(f"[green]wrote[/green] {out}: {n} pairs ({data['same']} same), {len(cache)} faces, "
               f"{data['bytes'] / 2**20:.1f} MiB{note}", data)


def register(app: typer.Typer) -> None:
    app.command("make-bin")(make_bin)
