"""The live queue for the operator: read what waits in the MAIL stream without disturbing
delivery, and steer it (suspend, hold, retry now, move, purge).

**Reading.** The MAIL stream is a work queue: it refuses a consumer that overlaps the
dispatchers' durables, and fetching (then nak-ing) messages that replicas work on would
disturb them. So it is walked by sequence, with ``STREAM.MSG.GET`` requests (``next by
subject`` from a sequence): reading a message by sequence touches no consumer. The range
of sequences is split between `WALKERS` concurrent walkers. Attempt records (attempts,
last reply, next attempt) and the CONTROL bucket are each read with one scan of their
last values (`runtime.scanning`).

**Steering** is the CONTROL bucket (`schemas.control`), which every dispatcher watches:
``suspend`` / ``resume`` an upstream, ``hold`` / ``release`` a mail. A held or suspended
mail is not attempted; it is never dead-lettered while it waits (README, "Operating the
queue").

**Moving** (``queue move``, and ``queue retry``, a move to the same upstream) is durable
and safe to repeat, per message, in this order:

1. a ``moving.<seq>`` entry in CONTROL: from now on no dispatcher attempts the original;
2. the copy (`queuedmail.moved_envelope`) is published with ``Nats-Msg-Id`` derived from
   the mail id, the original's sequence and the target (`queuedmail.move_msg_id`), and
   its PubAck awaited: a second run within the duplicate window stores no second copy;
3. the `events.Moved` event, then the original is deleted from MAIL by sequence; if it
   was gone already (a dispatcher that held it then delivered it), the new copy is deleted
   again, so the mail is not sent twice;
4. the ``moving`` entry is deleted.

Killed anywhere, the original is either still queued under its ``moving`` entry (held,
so never sent alongside its copy) or gone; the next ``move`` or ``retry`` first finishes
every interrupted move (`finish_interrupted`) with the target and id it recorded, and does
not store the copy again when one (``moved_from`` = the original) is still queued, even
past the duplicate window. A copy already delivered and an original still queued after
more than the window (an hour) would be sent again: run an interrupted move again soon.

Why retry-now is a move: a deferred mail sits in JetStream nak'ed with a delay, and a nak's
delay cannot be shortened from outside the server. A "retry now" mark in CONTROL would only
be seen when the delay is over. A copy is a new message, due at once; the original is
deleted, and the copy carries ``moved_from`` so the dispatcher continues the attempt
record (count, settled recipients) instead of starting over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec
import nats.js.errors

from admin.rules import queuedmail
from runtime import bus, eventing, requeueing, scanning
from schemas import control, events, mail, names

WALKERS = 8
"""Concurrent walkers of the MAIL stream's sequence range."""
MIN_PER_WALKER = 128
NO_MESSAGE = 10057
"""JetStream's error code for "no message found" (a 500 on delete)."""


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Queued:
    item: queuedmail.QueuedItem
    envelope: mail.Envelope


@dataclass(frozen=True)
class Queue:
    """What the MAIL stream held when read, and the steering then in force."""

    found: list[Queued]
    steer: queuedmail.Steering
    unreadable: int = 0

    def by_seq(self) -> dict[int, Queued]:
        return {q.item.seq: q for q in self.found}


# --- reading --------------------------------------------------------------------------------


async def _last_values(conn: bus.Conn, bucket: str) -> dict[str, bytes]:
    """Every live key of a KV bucket and its value, in one scan."""
    prefix = f"$KV.{bucket}."
    stored = await scanning.scan(conn, names.kv_stream(bucket), names.kv_filter(bucket),
                                 last_per_subject=True)
    return {msg.subject.removeprefix(prefix): msg.data for msg in stored
            if msg.headers.get("KV-Operation") not in ("DEL", "PURGE") and msg.data}


async def steering(conn: bus.Conn) -> queuedmail.Steering:
    return queuedmail.steering(await _last_values(conn, conn.names.control_bucket))


async def _records(conn: bus.Conn) -> dict[str, mail.AttemptRecord]:
    records: dict[str, mail.AttemptRecord] = {}
    for key, value in (await _last_values(conn, conn.names.attempts_bucket)).items():
        try:
            records[key] = mail.attempt_decoder.decode(value)
        except msgspec.DecodeError:
            continue
    return records


async def _walk(conn: bus.Conn, subject: str, low: int, high: int) -> list[scanning.Stored]:
    """The messages on ``subject`` with sequences in [low, high], by sequence."""
    stream = conn.names.mail_stream
    out: list[scanning.Stored] = []
    seq = low
    for _ in range(high - low + 1):  # each request moves past at least one sequence
        try:
            async with asyncio.timeout(conn.deadlines.api_s):
                raw = await conn.js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        if raw.seq is None or raw.seq > high:
            break
        out.append(scanning.Stored(seq=raw.seq, subject=raw.subject or "", data=raw.data or b"",
                                   headers=dict(raw.headers or {}), time=raw.time))
        seq = raw.seq + 1
        if seq > high:
            break
    return out


async def walk(conn: bus.Conn, subject: str) -> list[scanning.Stored]:
    """Every MAIL message on ``subject`` (a filter), in stream order, read by sequence."""
    async with asyncio.timeout(conn.deadlines.api_s):
        info = await conn.js.stream_info(conn.names.mail_stream)
    state = info.state
    if state.messages == 0:
        return []
    span = state.last_seq - state.first_seq + 1
    count = max(1, min(WALKERS, state.messages // MIN_PER_WALKER))
    step = -(-span // count)
    bounds = [(low, min(low + step - 1, state.last_seq))
              for low in range(state.first_seq, state.last_seq + 1, step)]
    parts = await asyncio.gather(*(_walk(conn, subject, low, high) for low, high in bounds))
    return [msg for part in parts for msg in part]


async def read(conn: bus.Conn, now: datetime, *, upstream: str | None = None) -> Queue:
    """The queued mail (for one upstream, or all) as rows, with the steering in force."""
    stored = await walk(conn, conn.names.mail_filter(upstream))
    records = await _records(conn)
    steer = await steering(conn)
    found: list[Queued] = []
    bad = 0
    for msg in stored:
        try:
            env = mail.envelope_decoder.decode(msg.data)
        except msgspec.DecodeError:
            bad += 1
            continue
        record = records.get(mail.attempts_key(env))
        found.append(Queued(queuedmail.queued_item(msg.seq, env, record, steer, now), env))
    return Queue(found=found, steer=steer, unreadable=bad)


async def oldest_received(conn: bus.Conn, upstreams: Sequence[str]) -> dict[str, datetime]:
    """Per upstream, when the first mail in its line (lowest sequence) was received: one
    read each. A mail moved or retried goes to the back of the line, so this is the
    oldest but for those."""
    stream = conn.names.mail_stream
    found: dict[str, datetime] = {}
    for upstream in upstreams:
        try:
            async with asyncio.timeout(conn.deadlines.api_s):
                raw = await conn.js.get_msg(stream, seq=1, subject=conn.names.mail_filter(
                    upstream), next=True)
            found[upstream] = mail.envelope_decoder.decode(raw.data or b"").received_at
        except (nats.js.errors.NotFoundError, msgspec.DecodeError):
            continue
    return found


# --- steering -------------------------------------------------------------------------------


async def _put(conn: bus.Conn, key: str, value: msgspec.Struct) -> None:
    kv = await bus.control_kv(conn)
    async with asyncio.timeout(conn.deadlines.kv_s):
        await kv.put(key, control.encoder.encode(value))


async def _delete(conn: bus.Conn, key: str) -> None:
    kv = await bus.control_kv(conn)
    async with asyncio.timeout(conn.deadlines.kv_s):
        await kv.delete(key)


async def suspend(conn: bus.Conn, upstream: str, *, until: datetime | None, reason: str,
                  now: datetime) -> queuedmail.SuspensionItem:
    entry = control.Suspension(upstream=upstream, since=now, until=until, reason=reason)
    await _put(conn, names.suspend_key(upstream), entry)
    await eventing.emit(conn, events.Suspended(mail_id="", at=now, upstream=upstream,
                                               until=until, reason=reason))
    return queuedmail.SuspensionItem(upstream=upstream, since=now, until=until,
                                     reason=reason, active=True)


async def resume(conn: bus.Conn, upstream: str, now: datetime) -> bool:
    """End a suspension; False when ``upstream`` was not suspended."""
    if upstream not in (await steering(conn)).suspended:
        return False
    await _delete(conn, names.suspend_key(upstream))
    await eventing.emit(conn, events.Resumed(mail_id="", at=now, upstream=upstream))
    return True


def _action(item: queuedmail.QueuedItem, outcome: str, **more: object) -> queuedmail.Action:
    return queuedmail.Action(seq=item.seq, mail_id=item.mail_id, upstream=item.upstream,
                             policy=item.policy, outcome=outcome, **more)  # type: ignore[arg-type]


async def hold(conn: bus.Conn, queue: Queue, chosen: Sequence[Queued], *, reason: str,
               now: datetime, advance: Callable[[], None] = _nothing) -> list[queuedmail.Action]:
    """Hold each chosen mail (every queued copy of its mail id)."""
    rows: list[queuedmail.Action] = []
    for queued in chosen:
        item = queued.item
        if item.mail_id not in queue.steer.held:
            await _put(conn, names.hold_key(item.mail_id),
                       control.Hold(mail_id=item.mail_id, since=now, reason=reason))
            await eventing.emit(conn, events.Held(mail_id=item.mail_id, at=now,
                                                  policy=item.policy, upstream=item.upstream,
                                                  reason=reason))
        rows.append(_action(item, "held"))
        advance()
    return rows


async def release(conn: bus.Conn, queue: Queue, chosen: Sequence[Queued], *, now: datetime,
                  advance: Callable[[], None] = _nothing) -> list[queuedmail.Action]:
    rows: list[queuedmail.Action] = []
    released: set[str] = set()
    for queued in chosen:
        item = queued.item
        if item.mail_id not in queue.steer.held:
            rows.append(_action(item, "not-held"))
        else:
            if item.mail_id not in released:
                await _delete(conn, names.hold_key(item.mail_id))
                await eventing.emit(conn, events.Released(
                    mail_id=item.mail_id, at=now, policy=item.policy, upstream=item.upstream))
                released.add(item.mail_id)
            rows.append(_action(item, "released"))
        advance()
    return rows


# --- moving ---------------------------------------------------------------------------------


async def _delete_queued(conn: bus.Conn, seq: int) -> bool:
    """Delete one MAIL message; False when it was gone already."""
    try:
        async with asyncio.timeout(conn.deadlines.api_s):
            return await conn.js.delete_msg(conn.names.mail_stream, seq)
    except nats.js.errors.APIError as exc:
        if exc.err_code == NO_MESSAGE or isinstance(exc, nats.js.errors.NotFoundError):
            return False
        raise


async def _carry_record(conn: bus.Conn, old: str, new: str) -> None:
    """The attempt record under the copy's key too, when the move changes the key (a
    caught mail released to an upstream keys its record by that upstream), so the copy
    goes on counting and never sends to a settled recipient again."""
    if old == new:
        return
    attempts = await bus.attempts_kv(conn)
    try:
        async with asyncio.timeout(conn.deadlines.kv_s):
            entry = await attempts.get(old)
    except nats.js.errors.KeyNotFoundError:
        return
    if entry.value:
        async with asyncio.timeout(conn.deadlines.kv_s):
            await attempts.put(new, entry.value)


async def _move_one(conn: bus.Conn, queued: Queued, to_upstream: str, msg_id: str,
                    now: datetime, *, copied: int | None = None) -> queuedmail.Action:
    """Steps 1-4 of the module docstring for one message; ``copied``: the MAIL sequence
    of its copy when an interrupted run stored one that is still queued (found by its
    ``moved_from``, which holds past the duplicate window too): it is not stored again."""
    item, env = queued.item, queued.envelope
    duplicate, to_seq = True, copied
    if copied is None:
        await _put(conn, names.moving_key(item.seq), control.Moving(
            seq=item.seq, mail_id=item.mail_id, to_upstream=to_upstream, msg_id=msg_id,
            since=now))
        copy = queuedmail.moved_envelope(env, item.seq, to_upstream)
        await _carry_record(conn, mail.attempts_key(env), mail.attempts_key(copy))
        async with asyncio.timeout(conn.deadlines.publish_s):
            ack = await conn.js.publish(conn.names.mail_subject(to_upstream, env.policy),
                                        mail.envelope_encoder.encode(copy),
                                        headers={"Nats-Msg-Id": msg_id})
        duplicate, to_seq = bool(ack.duplicate), ack.seq
    if not duplicate:
        await eventing.emit(conn, events.Moved(
            mail_id=item.mail_id, at=now, policy=item.policy, upstream=item.upstream,
            from_seq=item.seq, to_seq=to_seq or 0, to_upstream=to_upstream,
            retry=to_upstream == env.upstream))
    outcome = "already-moved" if duplicate else "moved"
    if not await _delete_queued(conn, item.seq) and not duplicate and to_seq is not None:
        await _delete_queued(conn, to_seq)  # the original was settled meanwhile
        outcome, to_seq = "gone", None
    await _delete(conn, names.moving_key(item.seq))
    return _action(item, outcome, to_upstream=to_upstream, to_seq=to_seq)


async def finish_interrupted(conn: bus.Conn, queue: Queue, now: datetime
                             ) -> list[queuedmail.Action]:
    """Finish every move a killed run left behind (its ``moving`` entry still stored) with
    the target and id it recorded; forget the entries whose original is gone."""
    present = queue.by_seq()
    copies = {(q.envelope.moved_from, q.envelope.upstream): q.item.seq for q in queue.found
              if q.envelope.moved_from is not None}
    rows: list[queuedmail.Action] = []
    for seq, moving in sorted(queue.steer.moving.items()):
        queued = present.get(seq)
        if queued is None:
            await _delete(conn, names.moving_key(seq))
            continue
        rows.append(await _move_one(conn, queued, moving.to_upstream, moving.msg_id, now,
                                    copied=copies.get((seq, moving.to_upstream))))
    return rows


async def move(conn: bus.Conn, chosen: Sequence[Queued], *, to_upstream: str | None,
               now: datetime, advance: Callable[[], None] = _nothing
               ) -> list[queuedmail.Action]:
    """Move each chosen mail to ``to_upstream``; None: retry now (a move to its own
    upstream, for deferred mail only)."""
    rows: list[queuedmail.Action] = []
    for queued in chosen:
        item = queued.item
        target = to_upstream or item.upstream
        if to_upstream is None and item.state != queuedmail.DEFERRED:
            rows.append(_action(item, "not-deferred"))
        elif to_upstream is not None and to_upstream == item.upstream:
            rows.append(_action(item, "not-moved", to_upstream=target))
        else:
            msg_id = queuedmail.move_msg_id(item.mail_id, item.seq, target)
            rows.append(await _move_one(conn, queued, target, msg_id, now))
        advance()
    return rows


# --- purging --------------------------------------------------------------------------------


async def purge(conn: bus.Conn, queue: Queue, chosen: Sequence[Queued], *, now: datetime,
                advance: Callable[[], None] = _nothing) -> list[queuedmail.Action]:
    """Delete each chosen message from MAIL (a `Removed` event each), then what only they
    used: their holds, attempt records and body objects."""
    rows: list[queuedmail.Action] = []
    for queued in chosen:
        item = queued.item
        gone = not await _delete_queued(conn, item.seq)
        if not gone:
            await eventing.emit(conn, events.Removed(
                mail_id=item.mail_id, at=now, policy=item.policy, upstream=item.upstream,
                seq=item.seq))
        rows.append(_action(item, "gone" if gone else "purged"))
        advance()
    purged = {q.item.seq for q in chosen}
    left = [q.envelope for q in queue.found if q.item.seq not in purged]
    left_ids = {env.id for env in left}
    for mail_id in sorted({q.item.mail_id for q in chosen} - left_ids):
        if mail_id in queue.steer.held:
            await _delete(conn, names.hold_key(mail_id))
    attempts = await bus.attempts_kv(conn)
    for key in sorted(queuedmail.orphaned_records([q.item for q in chosen], left)):
        try:
            async with asyncio.timeout(conn.deadlines.kv_s):
                await attempts.delete(key)
        except nats.js.errors.NotFoundError:
            continue
    await requeueing.release_bodies(conn, [q.item.body_object for q in chosen
                                        if q.item.body_object is not None])
    return rows
