"""Read the mail podpost keeps for people: dead letters on DEAD, caught mail on CAUGHT, the
bodies they refer to, and what is queued per subject on MAIL.

Two roles read these: ``admin`` (the ``podpost`` operator commands) and ``console`` (the
web console). Roles never import each other, so the reads live here, one floor below
both, and return the bus's own Structs with their stream sequence (`Kept`); each role
folds them into its own rows.

Streams are read with `runtime.scanning` (a scan that never disturbs the durable
consumers, bounded in count and time); single messages by sequence. The MAIL stream is a
work queue, which refuses a second consumer on the same subjects: it is only ever walked
by sequence, with a budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import msgspec
import nats.js.errors

from runtime import bus, scanning
from schemas import mail

CLOCK_SKEW_S = 300.0
"""``since`` asks the server for messages stored after the cutoff minus this margin; the
caller filters on the mail's own time afterwards."""
MAIL_WALK_BUDGET = 20_000
"""Queued messages checked for a body reference before a purge gives up and keeps it."""

T = TypeVar("T")
M = TypeVar("M")


@dataclass(frozen=True)
class Kept(Generic[T]):
    """One stored message, decoded, with its stream sequence (the id people use)."""

    seq: int
    value: T


@dataclass(frozen=True)
class Read(Generic[T]):
    """What a read found, and how many messages could not be decoded."""

    found: list[T]
    unreadable: int = 0
    last_seq: int = 0


def decode(stored: Sequence[scanning.Stored], decoder: msgspec.json.Decoder[M],
           make: Callable[[scanning.Stored, M], T]) -> Read[T]:
    """Decode each stored message and make its row; count what does not decode."""
    found: list[T] = []
    bad = 0
    for msg in stored:
        try:
            value = decoder.decode(msg.data)
        except msgspec.DecodeError:
            bad += 1
            continue
        found.append(make(msg, value))
    return Read(found, bad, max((msg.seq for msg in stored), default=0))


def _kept(msg: scanning.Stored, value: M) -> Kept[M]:
    return Kept(msg.seq, value)


async def _scan(conn: bus.Conn, stream: str, subject: str, since: datetime | None,
                start_seq: int | None) -> list[scanning.Stored]:
    start = None if since is None else since - timedelta(seconds=CLOCK_SKEW_S)
    return await scanning.scan(conn, stream, subject, start_time=start, start_seq=start_seq)


# --- dead letters ------------------------------------------------------------------------


async def dead_letters(
    conn: bus.Conn, *, upstream: str | None = None, since: datetime | None = None,
    start_seq: int | None = None,
) -> Read[Kept[mail.DeadLetter]]:
    """Dead letters, for one upstream (its subject) or all; ``since`` only narrows what the
    server sends (by storage time, with a margin): filter on ``dead_at`` afterwards."""
    stored = await _scan(conn, conn.names.dead_stream, conn.names.dead_filter(upstream),
                         since, start_seq)
    return decode(stored, mail.dead_letter_decoder, _kept)


async def dead_letter(conn: bus.Conn, seq: int) -> Kept[mail.DeadLetter] | None:
    """One dead letter by DEAD sequence; None when it is not there (or not a dead letter)."""
    return await _one(conn, conn.names.dead_stream, seq, mail.dead_letter_decoder)


# --- caught mail -------------------------------------------------------------------------


async def caught(
    conn: bus.Conn, *, namespace: str | None = None, since: datetime | None = None,
    start_seq: int | None = None,
) -> Read[Kept[mail.Caught]]:
    """Mail the catcher kept, of the policies of one namespace or of all, oldest first."""
    stored = await _scan(conn, conn.names.caught_stream, conn.names.caught_filter(namespace),
                         since, start_seq)
    return decode(stored, mail.caught_decoder, _kept)


async def caught_one(conn: bus.Conn, seq: int) -> Kept[mail.Caught] | None:
    """One caught mail by CAUGHT sequence; None when it is not there."""
    return await _one(conn, conn.names.caught_stream, seq, mail.caught_decoder)


async def _one(conn: bus.Conn, stream: str, seq: int, decoder: msgspec.json.Decoder[M]
               ) -> Kept[M] | None:
    stored = await scanning.get(conn, stream, seq)
    if stored is None:
        return None
    read = decode([stored], decoder, _kept)
    return read.found[0] if read.found else None


# --- bodies and the queue ----------------------------------------------------------------


class BodyMissing(Exception):
    """The envelope refers to a body object that is gone."""


async def body(conn: bus.Conn, env: mail.Envelope) -> bytes:
    """The whole stored message of an envelope: inline, or from the object store."""
    if env.body is not None:
        return env.body
    if env.body_ref is None:
        raise BodyMissing(f"mail {env.id} has no body")
    data = await bus.read_body(await bus.bodies(conn), env, conn.deadlines.body_s)
    if data is None:  # never stored, or deleted
        raise BodyMissing(f"body object {env.body_ref.name!r} of mail {env.id} is gone")
    return data


async def subject_counts(conn: bus.Conn, stream: str, subject: str) -> dict[str, int]:
    """Messages per subject of ``stream`` matching ``subject`` (one API request)."""
    async with asyncio.timeout(conn.deadlines.api_s):
        info = await conn.js.stream_info(stream, subjects_filter=subject)
    return dict(info.state.subjects or {})


async def queued_body_refs(conn: bus.Conn, budget: int = MAIL_WALK_BUDGET) -> set[str] | None:
    """Body objects referred to by mail waiting in the MAIL stream; None when the stream
    holds more than ``budget`` messages (the caller must then assume every body is used)."""
    stream = conn.names.mail_stream
    async with asyncio.timeout(conn.deadlines.api_s):
        info = await conn.js.stream_info(stream)
    if info.state.messages == 0:
        return set()
    if info.state.messages > budget:
        return None
    refs: set[str] = set()
    seq = info.state.first_seq
    for _ in range(info.state.messages):
        try:
            async with asyncio.timeout(conn.deadlines.api_s):
                raw = await conn.js.get_msg(stream, seq=seq, subject=conn.names.mail_filter(),
                                            next=True)
        except nats.js.errors.NotFoundError:
            break
        if raw.seq is None:
            break
        try:
            env = mail.envelope_decoder.decode(raw.data or b"")
        except msgspec.DecodeError:
            env = None
        if env is not None and env.body_ref is not None:
            refs.add(env.body_ref.name)
        seq = raw.seq + 1
    return refs
