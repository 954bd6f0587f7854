"""What the dispatcher keeps about a mail on the bus: its attempt record, its body, and
what replaces it once it leaves the MAIL stream (a dead letter, a caught copy).

This is the only dispatcher module that reads or writes the ATTEMPTS bucket and the BODIES
object store, and the only one that publishes a mail's replacement. It decides nothing and
acks nothing: `delivery` reads through it, `settling` writes through it in the order that
keeps every mail (the replacement and the record first, the ack after).

- The attempt record (`mail.AttemptRecord`, keyed by `mail.attempts_key`) counts attempts
  and lists the settled recipients, so a redelivery never sends to one of them again. It
  is read only when there can be one (the message was delivered before, or it is a replay).
- A body over the inline limit lives in BODIES under the mail id, and is deleted once
  the mail is acked and nobody was dead-lettered (a dead letter may be replayed).
- A dead letter and a caught copy carry a ``Nats-Msg-Id`` derived from the mail (and the
  recipients), so a retry after a lost PubAck stores them once.

Every call has its deadline from ``conn.deadlines``; broker trouble (`bus.TRANSIENT`)
raises to the caller, except in `forget`, which is best effort (the bucket's TTL and the
object store's TTL clean up what it could not).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime

import msgspec
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from dispatcher.rules import classify, ledger
from runtime import bus
from schemas import mail

log = structlog.get_logger("dispatcher.recording")

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Stores:
    """The bus handles a mail's records live in."""

    conn: bus.Conn
    attempts: KeyValue
    bodies: ObjectStore


async def open_stores(conn: bus.Conn) -> Stores:
    """The ATTEMPTS bucket and the BODIES store of ``conn``'s bus."""
    return Stores(conn=conn, attempts=await bus.attempts_kv(conn), bodies=await bus.bodies(conn))


async def read(stores: Stores, msg: Msg, env: mail.Envelope) -> tuple[mail.AttemptRecord, bool]:
    """The stored attempt record and whether there is one, read only when there can be
    one: the message was delivered before, it is a replay (which has its own record) or an
    operator's copy (``moved_from``: queue retry/move, the record of the original).
    A record that does not decode counts as stored (it must be deleted at the end)."""
    if env.replay_of is None and env.moved_from is None and msg.metadata.num_delivered <= 1:
        return mail.AttemptRecord(), False
    try:
        async with asyncio.timeout(stores.conn.deadlines.kv_s):
            entry = await stores.attempts.get(mail.attempts_key(env))
    except nats.js.errors.KeyNotFoundError:
        return mail.AttemptRecord(), False
    if entry.value is None:
        return mail.AttemptRecord(), False
    try:
        return mail.attempt_decoder.decode(entry.value), True
    except msgspec.DecodeError:
        log.error("dispatcher.attempt_record_invalid")
        return mail.AttemptRecord(), True


async def body(stores: Stores, env: mail.Envelope) -> bytes | None:
    """The stored message, inline or from the object store; None when it is gone."""
    return await bus.read_body(stores.bodies, env, stores.conn.deadlines.body_s)


async def put(stores: Stores, key: str, record: mail.AttemptRecord) -> None:
    """Write the attempt record under ``key``."""
    async with asyncio.timeout(stores.conn.deadlines.kv_s):
        await stores.attempts.put(key, _encoder.encode(record))


async def dead_letter(
    stores: Stores, env: mail.Envelope, upstream: str, verdict: classify.Verdict,
    record: mail.AttemptRecord, key: str, now: datetime,
) -> None:
    """Store one dead group on the DEAD stream and await its PubAck."""
    letter = mail.DeadLetter(
        envelope=msgspec.structs.replace(env, rcpt_to=list(verdict.rcpts)),
        fate=str(verdict.dead_fate or classify.DeadFate.PERMANENT),
        reason=verdict.reason,
        code=verdict.code,
        reply=verdict.reply,
        attempts=record.attempts,
        first_attempt_at=record.first_attempt_at,
        last_attempt_at=record.last_attempt_at,
        dead_at=now,
    )
    conn = stores.conn
    async with asyncio.timeout(conn.deadlines.publish_s):
        await conn.js.publish(
            conn.names.dead_subject(upstream), _encoder.encode(letter),
            headers={"Nats-Msg-Id": ledger.dead_letter_id(key, verdict.rcpts)},
        )


async def caught(stores: Stores, env: mail.Envelope, policy: str, now: datetime) -> None:
    """Keep the mail on the CAUGHT stream (deduplicated by the mail's attempts key, so a
    redelivery is kept once) and await its PubAck."""
    conn = stores.conn
    copy = mail.Caught(envelope=env, caught_at=now)
    async with asyncio.timeout(conn.deadlines.publish_s):
        await conn.js.publish(
            conn.names.caught_subject(policy), mail.envelope_encoder.encode(copy),
            headers={"Nats-Msg-Id": mail.attempts_key(env)})


async def forget(
    stores: Stores, key: str, *, had_record: bool, body_ref: mail.BodyRef | None
) -> None:
    """After a confirmed ack: delete the attempt record (when one is stored) and the body
    object (when ``body_ref`` is given), best effort."""
    deadlines = stores.conn.deadlines
    with contextlib.suppress(*bus.TRANSIENT):
        if had_record:
            async with asyncio.timeout(deadlines.kv_s):
                await stores.attempts.delete(key)
        if body_ref is not None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                async with asyncio.timeout(deadlines.body_s):
                    await stores.bodies.delete(body_ref.name)
