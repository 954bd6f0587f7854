"""Replay dead letters: queue each one's mail again, then move it out of DEAD.

For each dead letter, in this order, so that nothing is referred to before it is stored:

1. A body kept in the object store is copied to an object of the replay's own, named like
   the replay's ``Nats-Msg-Id``. The dispatcher deletes a delivered mail's body object; with
   a copy of its own, a replay never takes away a body that the original mail's other
   recipients, another dead letter or another replay still need.
2. The envelope, marked ``replay_of=<DEAD sequence>`` (so it gets a fresh attempt count)
   and routed to ``--to-upstream`` when given, is published to
   ``mail.out.<upstream>.<policy>`` with ``Nats-Msg-Id: <mail id>.replay.<DEAD sequence>``.
   Within the MAIL stream's duplicate window (an hour) one dead letter is queued once,
   however often and by however many operators at once it is replayed.
3. A `Replayed` event, then the dead letter is deleted from DEAD: a replay *moves* it, as a
   queue redrive does. ``dlq list`` shows only what still needs attention, a replay that
   fails again becomes a new dead letter whose ``replay_of`` says where it came from, and
   ``podpost trace`` keeps the history. Replaying a dead letter that is gone finds it
   gone; its event tells the command that it was replayed already.
4. When all are done, each original body object is deleted if nothing refers to it any
   more (`purging.release_bodies`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

import msgspec
import nats.js.errors
from nats.js.object_store import ObjectStore

from admin import inspecting, purging
from admin.rules import deadletters
from runtime import bus, eventing
from schemas import events, mail

QUEUED = "queued"
ALREADY_QUEUED = "already-queued"
BODY_MISSING = "body-missing"
PLANNED = "planned"


def _nothing() -> None:
    pass


async def replay(
    conn: bus.Conn, chosen: Sequence[inspecting.Dead], *, to_upstream: str | None,
    dry_run: bool, now: datetime, advance: Callable[[], None] = _nothing,
) -> list[deadletters.Replay]:
    """Replay ``chosen`` in stream order; one row each saying what became of it."""
    store: ObjectStore | None = None
    if not dry_run and any(dead.letter.envelope.body_ref for dead in chosen):
        store = await bus.bodies(conn)
    rows: list[deadletters.Replay] = []
    moved: set[str] = set()
    for dead in chosen:
        row = await _one(conn, store, dead, to_upstream=to_upstream, dry_run=dry_run, now=now)
        rows.append(row)
        ref = dead.letter.envelope.body_ref
        if ref is not None and row.outcome in (QUEUED, ALREADY_QUEUED):
            moved.add(ref.name)
        advance()
    await purging.release_bodies(conn, moved)
    return rows


async def _one(
    conn: bus.Conn, store: ObjectStore | None, dead: inspecting.Dead, *,
    to_upstream: str | None, dry_run: bool, now: datetime,
) -> deadletters.Replay:
    env = dead.letter.envelope
    seq = dead.item.seq
    msg_id = deadletters.replay_msg_id(env.id, seq)
    again = deadletters.replay_envelope(env, seq, to_upstream)
    subject = conn.names.mail_subject(again.upstream, again.policy)
    row = deadletters.Replay(seq=seq, mail_id=env.id, policy=env.policy,
                             from_upstream=env.upstream, to_upstream=again.upstream,
                             subject=subject, msg_id=msg_id, rcpt_to=list(env.rcpt_to),
                             outcome=PLANNED)
    if dry_run:
        return row
    if env.body_ref is not None:
        assert store is not None
        copy = await _copy_body(conn, store, env, msg_id)
        if copy is None:
            return msgspec.structs.replace(row, outcome=BODY_MISSING)
        again = msgspec.structs.replace(again, body_ref=copy)
    async with asyncio.timeout(conn.deadlines.publish_s):
        ack = await conn.js.publish(subject, mail.envelope_encoder.encode(again),
                                    headers={"Nats-Msg-Id": msg_id})
    if not ack.duplicate:  # a duplicate was replayed (and its event sent) before
        await eventing.emit(conn, events.Replayed(
            mail_id=env.id, at=now, policy=env.policy, upstream=env.upstream, dead_seq=seq,
            to_upstream=again.upstream))
    await purging.delete_dead(conn, seq)
    return msgspec.structs.replace(row, outcome=ALREADY_QUEUED if ack.duplicate else QUEUED,
                                   mail_seq=ack.seq)


async def _copy_body(conn: bus.Conn, store: ObjectStore, env: mail.Envelope, name: str
                     ) -> mail.BodyRef | None:
    """The replay's own copy of the envelope's body object, under ``name``: already there
    when this dead letter was replayed before (the same bytes), else copied. None when
    both are gone."""
    ref = env.body_ref
    assert ref is not None
    copy = mail.BodyRef(name=name, size=ref.size, sha256=ref.sha256)
    timeout_s = conn.deadlines.body_s
    try:
        async with asyncio.timeout(timeout_s):
            await store.get_info(name)
        return copy
    except nats.js.errors.NotFoundError:
        pass
    data = await bus.read_body(store, env, timeout_s)
    if data is None:
        return None
    async with asyncio.timeout(timeout_s):
        await store.put(name, data)
    return copy
