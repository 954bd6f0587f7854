"""Which attempt records and body objects are residue: left behind by a crash, a lost ack
or a broker restart, and referred to by no mail.

A record or a body belongs to live mail while a message of the MAIL stream names it (its
attempts key, its body reference), or, for a body, while a dead letter or a caught copy
does (a dead letter may be replayed, caught mail may be viewed). Everything else is
residue, but only once it is older than ``grace_s``: a body is stored *before* its envelope
is published, a client may retry a transaction whose upload was cut and reuse its object,
and a listing races with the publishes going on meanwhile, so nothing young is touched.
The grace is at least the MAIL stream's duplicate window, within which a retry can still
find an object its first try stored. Chunks that no live meta names (an upload cut before
its meta was written) and delete markers are residue after the same grace. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Record:
    """An attempt record as the ATTEMPTS bucket holds it."""

    key: str
    revision: int
    written_at: datetime


@dataclass(frozen=True)
class Body:
    """A body object's meta as the BODIES store holds it (a delete marker included)."""

    name: str
    nuid: str
    deleted: bool
    written_at: datetime


@dataclass(frozen=True)
class Chunks:
    """The chunk set on one chunk subject of the BODIES store, and its newest chunk."""

    nuid: str
    written_at: datetime


@dataclass(frozen=True)
class Live:
    """What live mail names: attempts keys (MAIL) and body names (MAIL, DEAD, CAUGHT)."""

    keys: frozenset[str]
    bodies: frozenset[str]


@dataclass(frozen=True)
class Residue:
    records: list[Record]
    bodies: list[Body]
    """Objects to remove whole (a live object nobody names, or a delete marker)."""
    chunks: list[Chunks]
    """Chunk sets no object's meta names."""


def _old(at: datetime, now: datetime, grace_s: float) -> bool:
    return (now - at).total_seconds() >= grace_s


def residue(
    records: Iterable[Record], bodies: Iterable[Body], chunks: Iterable[Chunks], live: Live,
    *, now: datetime, grace_s: float,
) -> Residue:
    """What may be removed now (see the module docstring)."""
    metas = list(bodies)
    named = {body.nuid for body in metas if not body.deleted and body.nuid}
    return Residue(
        records=[r for r in records
                 if r.key not in live.keys and _old(r.written_at, now, grace_s)],
        bodies=[b for b in metas
                if (b.deleted or b.name not in live.bodies) and _old(b.written_at, now, grace_s)],
        chunks=[c for c in chunks
                if c.nuid not in named and _old(c.written_at, now, grace_s)],
    )
