"""One registry for every ``--NAME CHOICE`` in lrfr: backbones, losses, finetune methods,
protocols, samplers and SR architectures.

Each of them used to carry its own dict, its own "choose one of" error and, for losses and
methods, its own ``KEY=VALUE`` option parser. A :class:`Registry` gives them one behaviour:
names are case-insensitive, an unknown name is one :class:`~lrfr_cli.errors.LrfrError` line that
lists the choices, ``describe()`` is the ``--help`` list, and options (typed by
:class:`Option`) are parsed and checked in one place, so ``--loss-opt m=0.4`` and
``--method-opt margin=0.3`` fail the same way.

It imports nothing but :mod:`lrfr_cli.errors`, so any layer may hold a registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import LrfrError

T = TypeVar("T")


@dataclass(frozen=True)
class Option:
    """One option of a registered item: its type, default and a help line.

    ``kind`` None means "the type of the default" (float when the default is None).
    """

    default: Any
    help: str = ""
    kind: type | None = None

    @property
    def type_name(self) -> str:
        return (self.kind or (type(self.default) if self.default is not None else float)).__name__


def convert(text: str, option: Option, *, where: str) -> Any:
    """``text`` as ``option``'s type; ``where`` starts the error (``--loss-opt m=x: arcface's m``).

    Booleans take 1/0, true/false, yes/no, on/off; nan and inf are refused because no option
    means them and they would poison a run many steps later.
    """
    kind, default = option.kind, option.default
    try:
        if kind is bool or (kind is None and isinstance(default, bool)):
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is not None:
            value = kind(text)
        elif isinstance(default, int):
            value = int(text)
        elif isinstance(default, float) or default is None:
            value = float(text)
        else:
            value = type(default)(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(text)
        return value
    except ValueError:
        raise LrfrError(f"{where} takes a {option.type_name} value (default {option.default})") from None


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered item: the object (class, factory, protocol), one summary line, its options."""

    name: str
    obj: T
    summary: str
    options: Mapping[str, Option] = field(default_factory=dict)


class Registry(Generic[T]):
    """Named items of one kind (``kind`` as the errors say it: "loss", "backbone", ...).

    ``opt_flag`` is the command-line option that sets an item's options (``--loss-opt``), for
    the error texts. ``options_of`` reads an
    item's options from the object when ``register`` is not given them (e.g. a head's
    constructor signature).
    """

    def __init__(
        self,
        kind: str,
        *,
        opt_flag: str | None = None,
        options_of: Callable[[Any], Mapping[str, Option]] | None = None,
    ) -> None:
        self.kind = kind
        self.opt_flag = opt_flag
        self._options_of = options_of
        self._entries: dict[str, Entry[T]] = {}

    # -- registering -------------------------------------------------------------------------
    def register(self, name: str, obj: T, summary: str | None = None, options: Mapping[str, Option] | None = None) -> T:
        """Add ``obj`` as ``name``; ``summary`` defaults to ``obj.summary``. Returns ``obj`` so
        it can be used as ``PROTOCOL = registry.register("lfw", LfwProtocol())``. A later
        registration of the same name replaces the earlier one (plugins may override)."""
        key = name.strip().lower()
        if not key:
            raise ValueError(f"{self.kind}: a registered name is non-empty")
        summary = summary if summary is not None else getattr(obj, "summary", None)
        if not summary or "\n" in summary:
            raise ValueError(f"{self.kind} {name!r}: the summary is one non-empty line (it is printed by --help)")
        if options is None:
            options = self._options_of(obj) if self._options_of else {}
        self._entries[key] = Entry(key, obj, summary, dict(options))
        return obj

    # -- looking up --------------------------------------------------------------------------
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def unknown(self, name: str) -> LrfrError:
        """The one error text for a name that is not registered."""
        return LrfrError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}")

    def entry(self, name: str) -> Entry[T]:
        key = (name or "").strip().lower()
        if key not in self._entries:
            raise self.unknown(name)
        return self._entries[key]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def key(self, name: str) -> str:
        """The canonical (registered) spelling of ``name``."""
        return self.entry(name).name

    def items(self) -> Iterator[tuple[str, T]]:
        return ((k, e.obj) for k, e in self._entries.items())

    def values(self) -> Iterator[T]:
        return (e.obj for e in self._entries.values())

    def copy(self) -> Registry[T]:
        """The same entries in a registry of their own: registering into it leaves this one as
        it is (a test adding a throw-away item)."""
        new: Registry[T] = Registry(self.kind, opt_flag=self.opt_flag, options_of=self._options_of)
        new._entries = dict(self._entries)
        return new

    # -- options -----------------------------------------------------------------------------
    def defaults(self, name: str) -> dict[str, Any]:
        return {k: o.default for k, o in self.entry(name).options.items()}

    def _have(self, entry: Entry[T]) -> str:
        return ", ".join(f"{k}={_fmt(o.default)}" for k, o in entry.options.items()) or "none"

    def parse_options(self, name: str, items: Sequence[str]) -> dict[str, Any]:
        """``["m=0.4", "h=0.333"]`` → ``{"m": 0.4, "h": 0.333}``, typed by the options.

        Dashes in keys read as underscores (``--loss-opt m-hr=0.3``).
        """
        entry = self.entry(name)
        flag = self.opt_flag or "option"
        out: dict[str, Any] = {}
        for item in items:
            k, sep, v = item.partition("=")
            k = k.strip().replace("-", "_")
            if not sep or not k:
                raise LrfrError(f"{flag} {item!r}: expected KEY=VALUE")
            if k not in entry.options:
                raise LrfrError(f"{flag} {item}: {self.kind} {entry.name} has no option {k!r} (its options: {self._have(entry)})")
            out[k] = convert(v, entry.options[k], where=f"{flag} {k}={v}: {entry.name}'s {k}")
        return out

    def flag_options(self, name: str, flags: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
        """Options set by flags of their own (``{"--margin": ("margin", 0.3)}``, a None value
        meaning "not given"), already typed by the command line; a flag the item has no option
        for is an error that names the flag the user typed."""
        entry = self.entry(name)
        out: dict[str, Any] = {}
        for flag, (k, value) in flags.items():
            if value is None:
                continue
            if k not in entry.options:
                raise LrfrError(f"{flag}: {self.kind} {entry.name} has no option {k!r} (its options: {self._have(entry)})")
            out[k] = value
        return out

    def check_options(self, name: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` overlaid on the defaults; unknown keys are one error listing the options.
        Values that are None mean "the default"."""
        entry = self.entry(name)
        given = {k: v for k, v in given.items() if v is not None}
        unknown = sorted(set(given) - set(entry.options))
        if unknown:
            raise LrfrError(f"{self.kind} {entry.name} has no option {', '.join(unknown)} (its options: {self._have(entry)})")
        out = self.defaults(name)
        out.update(given)
        return out

    # -- help --------------------------------------------------------------------------------
    def describe(self, extra: Callable[[Entry[T]], str] | None = None) -> list[str]:
        """One line per item for ``--help``: ``name (k=v, ...[; extra]): summary``.
        Options whose default is None are left out (they mean "not set")."""
        lines = []
        for entry in self._entries.values():
            parts = [", ".join(f"{k}={_fmt(o.default)}" for k, o in entry.options.items() if o.default is not None)]
            if extra:
                parts.append(extra(entry))
            inner = "; ".join(p for p in parts if p)
            lines.append(f"{entry.name}{f' ({inner})' if inner else ''}: {entry.summary}")
        return lines


def check_choice(value: Any, choices: Iterable[Any], what: str) -> None:
    """The one error for a value outside a fixed set that is not a registry (``--setting``,
    ``--format``, ...): ``WHAT 'value': choose one of a, b``; ``what`` names the flag."""
    choices = tuple(choices)
    if value not in choices:
        raise LrfrError(f"{what} {value!r}: choose one of {', '.join(map(str, choices))}")


__all__ = ["Entry", "Option", "Registry", "check_choice", "convert"]
