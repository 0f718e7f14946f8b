"""The protocol registry: ``lrfr eval --dataset NAME`` and the report's metric names resolve here.

A new protocol is one module (a :class:`~lrfr_cli.protocols.base.EvalProtocol` subclass with its
``plan``, default data folder, layout, metric names, eval table and headline) plus one
``register(...)`` line below. Registration order is the order of ``--help`` and of report columns.

Importing this package loads no numpy or torch: the protocol modules import those inside
``plan``, so ``lrfr report`` can name metrics without paying for them.
"""

from __future__ import annotations

from ..registry import Registry
from . import binpack, ijb, lfw, scface, survface, tinyface
from .base import EvalOptions, EvalProtocol, Plan

#: The protocols by name (``--dataset``), in registration order; each one's summary is its title.
PROTOCOLS: Registry[EvalProtocol] = Registry("dataset")


def register(protocol: EvalProtocol) -> EvalProtocol:
    """Add ``protocol`` under its ``name`` (a later registration of the same name replaces it)."""
    if not protocol.name or protocol.name != protocol.name.strip().lower():
        raise ValueError(f"protocol name {protocol.name!r}: use a non-empty lower-case name")
    return PROTOCOLS.register(protocol.name, protocol, protocol.title or protocol.name)


def names() -> list[str]:
    return list(PROTOCOLS.names())


def get(name: str) -> EvalProtocol:
    """The protocol ``name``; an unknown name is the registry's one-line error listing the choices."""
    return PROTOCOLS.get(name)


_GENERIC = EvalProtocol()


def for_record(dataset: str) -> EvalProtocol:
    """The protocol that names a record's metrics; the generic one for a dataset no longer registered."""
    return PROTOCOLS.get(dataset) if dataset in PROTOCOLS else _GENERIC


def order(dataset: str) -> int:
    """Registration order, for sorting report columns (unregistered datasets last)."""
    keys = PROTOCOLS.names()
    return keys.index(PROTOCOLS.key(dataset)) if dataset in PROTOCOLS else len(keys)


register(lfw.PROTOCOL)
register(scface.PROTOCOL)
register(survface.PROTOCOL)
register(tinyface.PROTOCOL)
register(binpack.PROTOCOL)
register(ijb.IJBB)
register(ijb.IJBC)

__all__ = ["PROTOCOLS", "EvalOptions", "EvalProtocol", "Plan", "for_record", "get", "names", "order", "register"]
