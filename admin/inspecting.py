"""Read what the operator commands show: dead letters, caught mail, a mail's events, bodies
and the counts behind ``podpost status``.

Streams are read with `runtime.scanning` (a scan that never disturbs the durable
consumers, bounded in count and time); single messages by sequence. The MAIL stream is a
work queue, which refuses a second consumer on the same subjects: it is only ever walked
by sequence, with a budget. What it reads is folded into rows by `admin.rules`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import msgspec
import nats.js.errors

from admin.rules import caughtmail, deadletters, identifiers, statusreport, timeline
from runtime import bus, scanning
from schemas import events, mail, names, rates
from schemas import snapshot as snapshot_mod

CLOCK_SKEW_S = 300.0
"""``--since`` asks the server for messages stored after the cutoff minus this margin,
then filters on the dead letter's own time."""
MAIL_WALK_BUDGET = 20_000
"""Queued messages checked for a body reference before purge gives up and keeps it."""


# --- dead letters and caught mail ---------------------------------------------------------


@dataclass(frozen=True)
class Dead:
    item: deadletters.DeadItem
    letter: mail.DeadLetter


T = TypeVar("T")
M = TypeVar("M")


@dataclass(frozen=True)
class Read(Generic[T]):
    """What a read found, and how many messages could not be decoded."""

    found: list[T]
    unreadable: int = 0
    last_seq: int = 0


def _decode(stored: Sequence[scanning.Stored], decoder: msgspec.json.Decoder[M],
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


def _decode_dead(stored: Sequence[scanning.Stored]) -> Read[Dead]:
    return _decode(stored, mail.dead_letter_decoder,
                   lambda msg, letter: Dead(deadletters.dead_item(msg.seq, letter), letter))


async def dead_letters(
    conn: bus.Conn, *, upstream: str | None = None, since: datetime | None = None,
    start_seq: int | None = None,
) -> Read[Dead]:
    """Dead letters, for one upstream (its subject) or all; ``since`` only narrows what the
    server sends (by storage time, with a margin): filter on ``dead_at`` afterwards."""
    start = None if since is None else since - timedelta(seconds=CLOCK_SKEW_S)
    stored = await scanning.scan(conn, conn.names.dead_stream, conn.names.dead_filter(upstream),
                        start_time=start, start_seq=start_seq)
    return _decode_dead(stored)


async def dead_letter(conn: bus.Conn, seq: int) -> Dead | None:
    """One dead letter by DEAD sequence; None when it is not there (or not a dead letter)."""
    stored = await scanning.get(conn, conn.names.dead_stream, seq)
    if stored is None:
        return None
    read = _decode_dead([stored])
    return read.found[0] if read.found else None


async def find_dead(conn: bus.Conn, ids: identifiers.Ids) -> tuple[list[Dead], list[str]]:
    """The dead letters named by ``ids`` and the ids that named nothing. Sequences are
    read one by one; a mail id needs a scan of the stream."""
    if ids.mail_ids:
        every = (await dead_letters(conn)).found
    else:
        every = [dead for seq in ids.seqs if (dead := await dead_letter(conn, seq)) is not None]
    by_seq = {dead.item.seq: dead for dead in every}
    items, unknown = identifiers.pick([dead.item for dead in every], ids)
    return [by_seq[item.seq] for item in items], unknown


@dataclass(frozen=True)
class CaughtMail:
    item: caughtmail.CaughtItem
    caught: mail.Caught


async def caught(conn: bus.Conn, *, with_subjects: bool = True) -> Read[CaughtMail]:
    """Every mail the catcher kept (the Subject is read from inline bodies only)."""
    stored = await scanning.scan(conn, conn.names.caught_stream, conn.names.caught_filter())

    def make(msg: scanning.Stored, kept: mail.Caught) -> CaughtMail:
        body = kept.envelope.body
        subject = caughtmail.subject_of(body) if with_subjects and body is not None else ""
        return CaughtMail(caughtmail.caught_item(msg.seq, kept, subject), kept)

    return _decode(stored, mail.caught_decoder, make)


async def find_caught(conn: bus.Conn, ids: identifiers.Ids) -> tuple[list[CaughtMail], list[str]]:
    every = (await caught(conn)).found
    by_seq = {kept.item.seq: kept for kept in every}
    items, unknown = identifiers.pick([kept.item for kept in every], ids)
    return [by_seq[item.seq] for item in items], unknown


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


# --- trace ----------------------------------------------------------------------------------


class _MailIdOnly(msgspec.Struct):
    mail_id: str = ""


_mail_id_decoder = msgspec.json.Decoder(_MailIdOnly)


async def history(conn: bus.Conn, mail_id: str, *, since: datetime | None = None
                  ) -> list[events.AnyEvent]:
    """Every event of one mail, oldest first (`timeline.ordered`: by time, not by arrival).
    Events are published per kind, not per mail, so this scans the stream; only the mail
    id of each event is decoded until one matches."""
    stored = await scanning.scan(conn, conn.names.events_stream, conn.names.events_filter(),
                        start_time=since)
    found: list[events.AnyEvent] = []
    for msg in stored:
        try:
            if _mail_id_decoder.decode(msg.data).mail_id != mail_id:
                continue
            found.append(events.event_decoder.decode(msg.data))
        except msgspec.DecodeError:
            continue  # an event kind this version does not know
    return timeline.ordered(found)


async def dead_letter_fates(conn: bus.Conn) -> list[events.Replayed | events.Purged]:
    """The `Replayed` and `Purged` events still kept, in order: what became of dead
    letters that are gone from DEAD. Only those two event subjects are read."""
    found: list[events.Replayed | events.Purged] = []
    for kind in ("replayed", "purged"):
        stored = await scanning.scan(conn, conn.names.events_stream, conn.names.event_subject(kind))
        for msg in stored:
            try:
                event = events.event_decoder.decode(msg.data)
            except msgspec.DecodeError:
                continue
            if isinstance(event, events.Replayed | events.Purged):
                found.append(event)
    return sorted(found, key=lambda event: event.at)


# --- status ---------------------------------------------------------------------------------


async def _subject_counts(conn: bus.Conn, stream: str, subject: str) -> dict[str, int]:
    async with asyncio.timeout(conn.deadlines.api_s):
        info = await conn.js.stream_info(stream, subjects_filter=subject)
    return dict(info.state.subjects or {})


async def _consumer_loads(conn: bus.Conn) -> list[statusreport.ConsumerLoad]:
    loads: list[statusreport.ConsumerLoad] = []
    for info in await bus.consumer_infos(conn):
        subjects = [info.config.filter_subject] if info.config.filter_subject else []
        subjects += info.config.filter_subjects or []
        loads.extend(statusreport.ConsumerLoad(filter_subject=subject,
                                               ack_pending=info.num_ack_pending or 0)
                     for subject in subjects[:1])
    return loads


async def _attempt_records(conn: bus.Conn) -> tuple[list[mail.AttemptRecord], int]:
    bucket = conn.names.attempts_bucket
    stored = await scanning.scan(conn, names.kv_stream(bucket), names.kv_filter(bucket),
                        last_per_subject=True)
    records: list[mail.AttemptRecord] = []
    bad = 0
    for msg in stored:
        if msg.headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            continue
        try:
            records.append(mail.attempt_decoder.decode(msg.data))
        except msgspec.DecodeError:
            bad += 1
    return records, bad


async def rate_used(conn: bus.Conn, now: datetime) -> dict[str, int]:
    """Messages sent per policy in its current rate-limit window (RATES bucket): the
    window's ``sent``, not its ``used``, which also holds the tokens dispatchers reserved
    for fetches still waiting for mail."""
    bucket = conn.names.rates_bucket
    stored = await scanning.scan(conn, names.kv_stream(bucket), names.kv_filter(bucket),
                        last_per_subject=True)
    windows: list[rates.RateWindow] = []
    for msg in stored:
        if msg.headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            continue
        with contextlib.suppress(msgspec.DecodeError):
            windows.append(rates.window_decoder.decode(msg.data))
    now_ms = int(now.timestamp() * 1000)
    return {policy: w.sent for policy, w in rates.current(windows, now_ms).items()}


async def policy_snapshot(conn: bus.Conn) -> tuple[snapshot_mod.PolicySnapshot | None, int]:
    stored = await bus.read_snapshot(conn)
    return stored.snapshot, stored.revision


async def status(conn: bus.Conn, now: datetime) -> statusreport.StatusReport:
    bus_names = conn.names
    queued = await _subject_counts(conn, bus_names.mail_stream, bus_names.mail_filter())
    dead = await _subject_counts(conn, bus_names.dead_stream, bus_names.dead_filter())
    consumers = await _consumer_loads(conn)
    records, bad = await _attempt_records(conn)
    snap, revision = await policy_snapshot(conn)
    used = await rate_used(conn, now)
    report = statusreport.status_report(bus_names, now=now, queued=queued, consumers=consumers,
                                        attempts=records, dead=dead, snap=snap, revision=revision,
                                        rate_used=used)
    return msgspec.structs.replace(report, unreadable_attempts=bad)


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
