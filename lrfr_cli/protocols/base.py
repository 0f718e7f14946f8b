"""What every protocol hands the eval command and the report: one :class:`EvalProtocol` object.

A protocol never runs the network. Its ``plan`` returns a :class:`Plan`: the image set, the
``{variant: paths}`` it needs, and a ``score`` function that turns cached embeddings into plain
numbers. That split is what lets one cached embedding pass serve every pair, gallery and size.
The rest of the object is what used to be ``if dataset == ...`` branches in ``eval`` and
``report``: where its data lives by default, how its results are named as flat metrics, which of
them are headline columns, and how ``eval`` shows them (table columns and the one-line summary).

Importable without numpy or torch (the heavy parts are imported inside ``plan``): ``lrfr report``
reads metric names from here and must start fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ..embed import Embeddings, ImageSet, Variant

MetricRow = tuple[str, Any, bool]
"""``(flat name, value, headline)``; :meth:`lrfr_cli.results.EvalRecord.metrics` keeps the numeric ones."""


@dataclass
class Plan:
    dataset: str
    protocol: str  # human description, e.g. "LFW View 2 (pairs.txt), 10-fold"
    images: ImageSet
    requests: dict[Variant, list[str]]
    score: Callable[[Embeddings], dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    output_name: str | None = None  # the eval JSON's stem when the data names it (a .bin file), else the protocol's


def variant_for(size: int | None, input_size: int, method: str, *, blur: float = 0.0, noise: float = 0.0,
                jpeg: int | None = None, seed: int = 0, up_method: str = "bicubic") -> Variant:
    """The HR variant for ``size >= input_size`` (or None) without extra degradations, else a degraded one."""
    from ..data.degrade import DegradeSpec
    from ..embed import Variant

    if size is None or (size >= input_size and not (blur or noise or jpeg)):
        return Variant(None)
    return Variant(DegradeSpec(size=min(size, input_size), method=method, blur=blur, noise=noise, jpeg=jpeg, up_method=up_method), seed)


def probe_variants(setting: str, sizes: Iterable[int], input_size: int, method: str, **degradation: Any
                   ) -> tuple[list[int], dict[int, Variant], Callable[[Variant], tuple[Variant, Variant]]]:
    """The pair protocols' probe plan: the sizes scored (hr-hr scores the input size alone), each
    size's variant, and what each side of a pair sees (hr-lr: the first side HR, the second the
    probe; lr-lr and hr-hr: both the same)."""
    from ..embed import Variant

    sizes = [input_size] if setting == "hr-hr" else list(sizes)
    variants = {s: variant_for(s, input_size, method, **degradation) for s in sizes}
    hr = Variant(None)

    def sides(v: Variant) -> tuple[Variant, Variant]:
        return (hr, v) if setting == "hr-lr" else (v, v)

    return sizes, variants, sides


@dataclass(frozen=True)
class EvalOptions:
    """The ``lrfr eval`` options a protocol may use, already parsed (each protocol names the ones it
    reads in :attr:`EvalProtocol.options`, which is what ``--help`` shows beside each option)."""

    sizes: list[int] = field(default_factory=list)
    setting: str = "hr-lr"
    pairs: Optional[Path] = None
    threshold_pairs: Optional[Path] = None
    distance: str = "all"
    landmarks: Optional[Path] = None
    distractors: bool = True
    method: str = "bicubic"
    blur: float = 0.0
    noise: float = 0.0
    jpeg: Optional[int] = None
    seed: int = 0
    input_size: int = 112
    bin_channels: str = "rgb"
    up_method: str = "bicubic"
    align_landmarks: Optional[Path] = None  # LFW --align landmarks / seed-landmarks: the 5-point file


def pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def result_base(protocol_id: str, key: str) -> str:
    """``scface/d2`` for a keyed result, just the protocol id for the single ``native`` one."""
    return protocol_id if key == "native" else f"{protocol_id}/{key}"


def tar_rows(base: str, r: Mapping[str, Any], headline_far: str | None = None) -> list[MetricRow]:
    return [(f"{base}:tar@far={far}", v, far == headline_far) for far, v in (r.get("tar_at_far") or {}).items()]


class EvalProtocol:
    """One evaluation protocol. Subclass it in ``protocols/<name>.py`` and add one
    ``register(...)`` line to ``protocols/__init__.py``; ``eval --dataset NAME`` and the report's
    metric names then follow. The defaults here are what an unknown protocol gets too (a record
    whose dataset is not registered still reports, with :meth:`metrics`'s generic names)."""

    name: str = ""
    title: str = ""  # human name: "LFW", "QMUL-SurvFace"
    data_dir: str = ""  # default data folder under $LRFR_DATA (the name when empty)
    layout: str = ""  # the expected layout under ROOT, for errors and --help
    options: tuple[str, ...] = ()  # eval options it reads beyond the model/engine ones
    synthetic_lr: bool = False  # probes are HR images degraded by lrfr (--sizes, --method, --sr, --align apply)
    figures: tuple[str, ...] = ()  # report figures: "accuracy_vs_size", "roc_per_size", "cmc", "roc"
    flip_default: bool = False  # --flip when not given (IJB: on, as insightface scores it)
    metric_help: str = ""  # its flat metric names, for `lrfr report --help`

    # ------------------------------------------------------------------ eval
    def default_root(self, data_root: Path) -> Path:
        return data_root / (self.data_dir or self.name)

    def check(self, opts: EvalOptions) -> None:
        """Option errors that need no data (raise :class:`~lrfr_cli.errors.LrfrError`)."""

    def data_items(self, root: Path) -> list[Path]:
        """What ``--data`` names, one eval record each (several ``.bin`` files); normally just ROOT."""
        return [root]

    def plan(self, root: Path, opts: EvalOptions) -> Plan:
        raise NotImplementedError

    def output_name(self, opts: EvalOptions) -> str:
        """The eval JSON's stem under ``evals/RUN/`` when ``--name`` is not given."""
        return self.name

    def sr_refusal(self, opts: EvalOptions) -> str | None:
        """Why ``--sr`` does not apply (None when it does): only lrfr-degraded probes can be super-resolved."""
        return None if self.synthetic_lr else f"--dataset {self.name} (its probes are real LR images)"

    def model_warning(self, plan: Plan, model_config: Mapping[str, Any]) -> str | None:
        """A warning about scoring this model on this data (e.g. trained on the test identities)."""
        return None

    def record_sizes(self, results: Mapping[str, Any]) -> list[int] | None:
        """The eval JSON's ``sizes`` field: the probe sizes for a size-keyed protocol, else None."""
        return None

    def order_results(self, results: Mapping[str, Any]) -> dict[str, Any]:
        """Results after merging with an earlier eval: sorted by key."""
        return dict(sorted(results.items()))

    def table(self, doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
        """``eval``'s table: column titles and rows of text (the command renders them)."""
        res = doc["results"]
        keys = sorted({k for r in res.values() if isinstance(r, dict) for k, v in r.items() if numeric(v)})
        return ["set", *keys], [[k, *(str(r.get(c, "–")) for c in keys)] for k, r in res.items() if isinstance(r, dict)]

    def headline(self, doc: Mapping[str, Any]) -> str:
        """The summary line's numbers (after ``evaluated RUN on NAME:``)."""
        return ", ".join(f"{name} {100 * v:.2f}%" for name, v, head in self.metrics_of(doc) if head and numeric(v)) or "done"

    # ------------------------------------------------------------------ report
    def protocol_id(self, doc: Mapping[str, Any]) -> str:
        """The leading part of its metric names; the dataset name unless a variant needs telling apart."""
        return str(doc["dataset"])

    def metrics(self, protocol_id: str, setting: str | None, results: Mapping[str, Any]) -> Iterable[MetricRow]:
        """Every number under its flat name, in the file's order. Default: each numeric leaf one
        level down, none a headline (what a record of an unregistered protocol gets)."""
        for key, r in results.items():
            if isinstance(r, dict):
                for k, v in r.items():
                    yield f"{result_base(protocol_id, key)}:{k}", v, False

    def metrics_of(self, doc: Mapping[str, Any]) -> list[MetricRow]:
        setting = (doc.get("protocol_info") or {}).get("setting")
        return list(self.metrics(self.protocol_id(doc), setting, doc["results"]))


RANK_KEYS = ("rank1", "rank5", "rank10", "rank20", "rank50", "map")


class IdentificationProtocol(EvalProtocol):
    """Closed-set identification (SCface, TinyFace): rank-k and, where reported, mAP per probe set."""

    headline_keys: tuple[str, ...] = ("rank1",)

    def metrics(self, protocol_id: str, setting: str | None, results: Mapping[str, Any]) -> Iterable[MetricRow]:
        for key, r in results.items():
            for k in RANK_KEYS:
                yield f"{result_base(protocol_id, key)}:{k}", r.get(k), k in self.headline_keys

    def table(self, doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
        res = doc["results"]
        # rank-50 and mAP only where the protocol reports them (TinyFace, as its paper does)
        keys = ["rank1", "rank5", "rank10", "rank20"] + [k for k in ("rank50", "map") if any(k in r for r in res.values())]
        cols = ["set", "probes", "gallery", *(f"{'mAP' if k == 'map' else 'rank-' + k[4:]} %" for k in keys)]
        return cols, [[k, str(r["probes"]), str(r["gallery"]), *(pct(r.get(c)) for c in keys)] for k, r in res.items()]

    def headline(self, doc: Mapping[str, Any]) -> str:
        return ", ".join(f"{k} rank-1 {100 * r['rank1']:.2f}%" + (f", mAP {100 * r['map']:.2f}%" if r.get("map") is not None else "")
                         for k, r in doc["results"].items())
