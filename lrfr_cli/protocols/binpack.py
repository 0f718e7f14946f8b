"""insightface ``.bin`` verification packs (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin`` ...) as an
eval protocol: ``lrfr eval --dataset bin --data cfp_fp.bin``.

Scored the way insightface's ``verification.py`` (and the toolkits that copy it) report these
packs: 10 folds of contiguous pairs (``KFold(10, shuffle=False)``), the threshold chosen on nine
and accuracy measured on the tenth, mean ± std (population) over folds; ``--flip`` adds the
mirrored face's raw embedding before normalising. One difference, on purpose: insightface scans
a fixed grid of 400 squared-distance thresholds, lrfr takes the exact best threshold between
distinct scores (:func:`~lrfr_cli.metrics.best_threshold`), so a fold's accuracy can be
a hair higher, never the grid's rounding. AUC and TAR@FAR use all pairs of the file together.

Low resolution works as for LFW: ``--setting hr-lr`` keeps the FIRST face of each pair (index
``2i``) as stored and degrades the SECOND (``2i + 1``) to every ``--sizes`` height and back;
``lr-lr`` degrades both. The faces are already aligned by the pack's writer: ``--align`` does not
apply. Results are keyed by probe size like LFW's, with metric names ``bin:<file stem>/SETTING@SIZE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LrfrError
from ..registry import check_choice
from .base import EvalOptions, Plan, probe_variants
from .lfw import SETTINGS, LfwProtocol

if TYPE_CHECKING:
    from ..data.binfile import BinPack
    from ..embed import Embeddings

LAYOUT = "a .bin file (insightface's pickle of (bins, issame)), a folder of them, or several files separated by commas"
_PACKS: dict[tuple[str, str], BinPack] = {}  # read once per process; forked DataLoader workers inherit it


def _rel(i: int) -> str:
    return f"{i:07d}"


@dataclass
class BinImages:
    """The faces of one pack, addressed by their index in ``bins`` (``"0000012"``)."""

    path: Path
    sha1: str
    channels: str = "rgb"
    size: int = 112
    name: str = ""

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.path), "sha1": self.sha1, "channels": self.channels, "size": self.size,
                "align": "as stored in the pack (faces aligned by its writer)"}

    def pack(self) -> BinPack:
        key = (str(self.path), self.sha1)
        if key not in _PACKS:  # a spawned worker reads the file itself
            from ..data.binfile import read_bin

            pk = read_bin(self.path)
            if pk.sha1 != self.sha1:
                raise LrfrError(f"{self.path} changed while it was being evaluated")
            _PACKS[key] = pk
        return _PACKS[key]

    def load(self, rel: str) -> Any:
        from ..data.sources import fit_face

        img = self.pack().decode(int(rel), self.channels)
        return fit_face(img, self.size)


def data_files(root: Path) -> list[Path]:
    """``--data``: one ``.bin``, a folder (every ``*.bin`` in it) or ``a.bin,b.bin``."""
    parts = [Path(p.strip()).expanduser() for p in str(root).split(",") if p.strip()] if "," in str(root) else [root]
    out: list[Path] = []
    for p in parts:
        if p.is_dir():
            found = sorted(p.glob("*.bin"))
            if not found:
                raise LrfrError(f"--data {p}: no *.bin files in this folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise LrfrError(f"--data {p}: no such .bin file or folder (expected {LAYOUT})")
    return list(dict.fromkeys(out))


def plan_bin(path: Path, opts: EvalOptions) -> Plan:
    from .. import metrics as M
    from ..data.binfile import check_channels, read_bin
    from ..embed import Variant
    from .lfw import verification_result

    channels = check_channels(opts.bin_channels)
    too_big = [s for s in opts.sizes if s > opts.input_size]
    if too_big:
        raise LrfrError(f"--sizes: {too_big[0]} px is larger than the {opts.input_size} px network input ({opts.input_size} = HR)")
    pack = read_bin(path)
    _PACKS[(str(path), pack.sha1)] = pack
    n = len(pack)
    images = BinImages(path, pack.sha1, channels, opts.input_size, name=f"bin-{pack.name}-{pack.sha1[:10]}")
    sizes, variants, sides = probe_variants(opts.setting, opts.sizes, opts.input_size, opts.method, blur=opts.blur,
                                            noise=opts.noise, jpeg=opts.jpeg, seed=opts.seed)
    first = [_rel(2 * i) for i in range(n)]
    second = [_rel(2 * i + 1) for i in range(n)]

    requests: dict[Variant, list[str]] = {}
    for s in sizes:
        a, b = sides(variants[s])
        requests.setdefault(a, []).extend(first)
        requests.setdefault(b, []).extend(second)
    requests = {v: list(dict.fromkeys(r)) for v, r in requests.items()}
    y = pack.issame.copy()
    folds = pack.folds()

    def score(emb: Embeddings) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in sizes:
            a, b = sides(variants[s])
            sc = M.pair_cosine(emb.get(a, first), emb.get(b, second))
            res: dict[str, Any] = {"size": s, "variant": variants[s].describe(), "pairs": n}
            res.update(verification_result(sc, y, M.kfold_accuracy(sc, y, folds)))
            out[str(s)] = res
        return out

    return Plan(
        dataset="bin",
        protocol=f"{pack.name}.bin ({n} pairs: {int(y.sum())} same), {opts.setting}; 10-fold: threshold chosen on 9 contiguous folds, accuracy on the held-out fold",
        images=images,
        requests=requests,
        score=score,
        info={"bin": pack.name, "bin_file": str(path), "sha1": pack.sha1, "pairs": n, "folds": int(folds.max()) + 1,
              "channels": channels, "setting": opts.setting,
              "hr_side": {"hr-lr": "first image of each pair HR, second degraded", "lr-lr": "both degraded", "hr-hr": "both HR"}[opts.setting]},
        output_name=f"bin-{pack.name}" + ("" if opts.setting == "hr-lr" else f"-{opts.setting}"),
    )


class BinProtocol(LfwProtocol):
    """insightface ``.bin`` packs; results keyed by probe size (LFW's table, headline and metric
    layout), metrics ``bin:<file stem>/SETTING@SIZE``."""

    name = "bin"
    title = "insightface .bin"
    layout = LAYOUT
    options = ("sizes", "setting", "bin_channels", "method", "blur", "noise", "jpeg", "seed", "sr")
    metric_help = ("bin:STEM/SETTING@SIZE (10-fold accuracy of STEM.bin, e.g. bin:cfp_fp/hr-lr@16), "
                   "bin:STEM/SETTING@SIZE:auc, bin:STEM/SETTING@SIZE:tar@far=0.001")

    def check(self, opts: EvalOptions) -> None:
        from ..data.binfile import check_channels

        check_choice(opts.setting, SETTINGS, "--setting")
        check_channels(opts.bin_channels)

    def data_items(self, root: Path) -> list[Path]:
        return data_files(root)

    def plan(self, root: Path, opts: EvalOptions) -> Plan:
        files = data_files(root)
        if len(files) != 1:
            raise LrfrError(f"--data {root}: {len(files)} .bin files; a plan scores one (eval runs each in turn)")
        return plan_bin(files[0], opts)

    def output_name(self, opts: EvalOptions) -> str:
        return "bin" + ("" if opts.setting == "hr-lr" else f"-{opts.setting}")

    def model_warning(self, plan: Plan, model_config: Mapping[str, Any]) -> str | None:
        return None

    def protocol_id(self, doc: Mapping[str, Any]) -> str:
        info = doc.get("protocol_info") or {}
        stem = info.get("bin") or (Path(str(info["bin_file"])).stem if info.get("bin_file") else "")
        return f"bin:{stem}" if stem else "bin"


PROTOCOL = BinProtocol()
