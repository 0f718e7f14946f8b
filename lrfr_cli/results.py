"""The evaluation record: what ``lrfr eval`` writes and ``lrfr report`` reads.

One type, so the JSON layout is defined once. A record is the eval JSON document itself (kept as
a plain dict, so files written before this module existed load unchanged) plus the few operations
both commands need: build, merge with an earlier eval made the same way, compatibility key, load
with a schema check, atomic save, and flat metric names for tables and CI gates.

Metric names (fractions in [0, 1], all higher-is-better; each protocol module in
:mod:`lrfr_cli.protocols` names its own, and which of them are headline columns)::

    lfw/hr-lr@16                 LFW accuracy, setting hr-lr, probe 16 px (pairs.txt, View 2)
    lfw-pairsDevTest/hr-lr@16    the same on another pairs file (here View 1's test pairs)
    lfw/hr-lr@16:auc             ROC AUC;  lfw/hr-lr@16:tar@far=0.001  TAR at FAR 0.1 %
    scface/d2:rank1              SCface rank-1 at distance 2 (also :rank5, :rank10, :rank20)
    survface:tar@far=0.01        QMUL-SurvFace TAR at FAR 1 % (also 0.3, 0.1, 0.001) and :auc
    tinyface:rank1, tinyface:map TinyFace rank-k (1, 5, 10, 20, 50) and mean average precision

Importable without torch or numpy: ``lrfr report`` starts in a fraction of a second.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocols
from .errors import LrfrError
from .workspace import atomic_write_text

SCHEMA_NAME = "lrfr.eval"
SCHEMA_VERSION = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"

# Leading keys in this order (the rest keep eval's order): humans read the file top down.
_FIRST = ("schema", "command", "dataset", "protocol")


class ResultsError(LrfrError):
    """An eval JSON that cannot be used: unreadable, truncated, not ours, or of a newer schema."""

    exit_code = 2


@dataclass(frozen=True)
class Metric:
    """One number of a record under its flat name (see the module docstring)."""

    name: str
    value: float
    headline: bool = False  # shown as a column of the report table and compared by --baseline


@dataclass
class EvalRecord:
    """One eval JSON document. ``doc`` is exactly what is written (field-compatible with the
    layout eval wrote before the schema field existed); ``path`` is where it was read from."""

    doc: dict[str, Any]
    path: Path | None = None

    # ------------------------------------------------------------------ build / load / save
    @classmethod
    def build(cls, **fields: Any) -> EvalRecord:
        """A new record of the current schema from eval's fields (``dataset``, ``results`` ...)."""
        missing = [k for k in ("dataset", "model", "results") if k not in fields]
        if missing:
            raise ValueError(f"EvalRecord.build needs {', '.join(missing)}")
        doc: dict[str, Any] = {"schema": SCHEMA, "command": "eval"}
        doc.update(fields)
        return cls(doc)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvalRecord:
        """Read and check an eval JSON; every way it can be unusable is one :class:`ResultsError` line."""
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise ResultsError(f"{p}: no such eval JSON") from None
        except IsADirectoryError:
            raise ResultsError(f"{p}: is a folder, not an eval JSON") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ResultsError(f"{p}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        if not text.strip():
            raise ResultsError(f"{p}: empty file (an interrupted write?); re-run `lrfr eval`")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            # Our writer ends every document with "}": a file that does not was cut off.
            where = "truncated" if not text.rstrip().endswith(("}", "]")) or e.pos >= len(text.rstrip()) - 1 else f"invalid JSON at line {e.lineno}"
            raise ResultsError(f"{p}: {where} ({e.msg}); re-run `lrfr eval` to rewrite it") from None
        return cls.from_dict(doc, p)

    @classmethod
    def from_dict(cls, doc: Any, path: Path | None = None) -> EvalRecord:
        where = str(path) if path else "eval record"
        if not isinstance(doc, dict):
            raise ResultsError(f"{where}: not an lrfr eval JSON (top level is a {type(doc).__name__})")
        schema = doc.get("schema")
        if schema is None:
            # Written before the schema field existed: the same layout, version 0.
            if doc.get("command") != "eval":
                raise ResultsError(f"{where}: not an lrfr eval JSON (no 'schema' and no \"command\": \"eval\")")
        else:
            name, _, ver = str(schema).partition("/")
            if name != SCHEMA_NAME or not ver.isdigit():
                raise ResultsError(f"{where}: unknown schema {schema!r} (this lrfr reads {SCHEMA_NAME}/0..{SCHEMA_VERSION})")
            if int(ver) > SCHEMA_VERSION:
                raise ResultsError(f"{where}: schema {schema} is newer than this lrfr reads ({SCHEMA}); upgrade lrfr")
        for key, kind in (("dataset", str), ("model", dict), ("results", dict)):
            if not isinstance(doc.get(key), kind):
                raise ResultsError(f"{where}: field {key!r} is missing or not a {kind.__name__}; re-run `lrfr eval`")
        if not isinstance(doc["model"].get("name"), str):
            raise ResultsError(f"{where}: field 'model.name' is missing; re-run `lrfr eval`")
        return cls(doc, path)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomic write (temp name, fsync, rename). Keys keep their order: sizes read 8, 12, 16."""
        p = Path(path)
        atomic_write_text(p, json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        self.path = p
        return p

    def to_dict(self) -> dict[str, Any]:
        first = {k: self.doc[k] for k in _FIRST if k in self.doc}
        return {**first, **{k: v for k, v in self.doc.items() if k not in first}}

    # ------------------------------------------------------------------ identity / merging
    @property
    def dataset(self) -> str:
        return str(self.doc["dataset"])

    @property
    def run(self) -> str:
        """The model's name: the run folder's name, or an external checkpoint's file stem."""
        return str(self.doc["model"]["name"])

    @property
    def results(self) -> dict[str, Any]:
        return self.doc["results"]

    @property
    def schema_version(self) -> int:
        s = self.doc.get("schema")
        return int(str(s).partition("/")[2]) if s else 0

    def compat_key(self) -> str:
        """Equal keys = results that may sit in one file: same data, protocol, images, degradation
        recipe and model weights (sizes or distances may differ: those are what a merge adds)."""
        d = self.doc
        try:
            keep: dict[str, Any] = {k: d[k] for k in ("dataset", "protocol_info", "images", "degradation")}
            keep["degradation"] = {k: v for k, v in keep["degradation"].items() if k != "variants"}
            keep["model"] = {k: d["model"][k] for k in ("checkpoint_sha1", "flip", "precision", "channel_order")}
        except (KeyError, TypeError, AttributeError) as e:
            raise ResultsError(f"{self.path or 'eval record'}: lacks field {e} needed to compare setups") from None
        return json.dumps(keep, sort_keys=True, default=str)

    def same_setup(self, other: EvalRecord) -> bool:
        try:
            return self.compat_key() == other.compat_key()
        except ResultsError:
            return False

    def merge_previous(self, old: EvalRecord) -> list[str]:
        """Keep ``old``'s results for settings this record lacks when both were made the same way.

        Returns the added result keys (empty when the setups differ). The protocol orders the merged
        keys (LFW's are probe sizes, in numeric order; others are sorted by name).
        """
        if not self.same_setup(old):
            return []
        added = [k for k in old.results if k not in self.results]
        for k in added:
            self.results[k] = old.results[k]
        proto = protocols.for_record(self.dataset)
        self.doc["results"] = proto.order_results(self.results)
        sizes = proto.record_sizes(self.results)
        if sizes is not None:
            self.doc["sizes"] = sizes
        return added

    # ------------------------------------------------------------------ metrics
    @property
    def protocol_id(self) -> str:
        """The leading part of the record's metric names: the dataset name, except where the
        protocol tells variants apart (``lfw-<pairs file stem>`` for LFW pairs other than pairs.txt)."""
        return protocols.for_record(self.dataset).protocol_id(self.doc)

    @property
    def setting(self) -> str | None:
        return (self.doc.get("protocol_info") or {}).get("setting")

    def metrics(self) -> list[Metric]:
        """Every number of the record under its flat name, in the file's order (the protocol
        names them; an unregistered dataset gets every numeric leaf one level down)."""
        proto = protocols.for_record(self.dataset)
        return [Metric(name, float(v), head) for name, v, head in proto.metrics(self.protocol_id, self.setting, self.results)
                if isinstance(v, (int, float)) and not isinstance(v, bool)]


def metric_help() -> str:
    """The ``--fail-under`` help: every registered protocol's metric names."""
    names = "; ".join(p.metric_help for p in protocols.PROTOCOLS.values() if p.metric_help)
    return f"Metric names: {names}. Values are fractions in [0, 1]."


METRIC_HELP = metric_help()


__all__ = ["METRIC_HELP", "SCHEMA", "SCHEMA_VERSION", "EvalRecord", "Metric", "ResultsError", "metric_help"]
