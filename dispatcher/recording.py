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

- A body is removed by purging its meta and chunk subjects (`runtime.bodystore.purge`), so no delete
  marker is left in the BODIES stream for every delivered mail.

Every call has its deadline from ``conn.deadlines``; broker trouble (`bus.TRANSIENT`)
raises to the caller, except in `forget`: a cleanup that fails is logged and queued on the
`Backlog`, which `sweeping` retries; what it gives up on is left to the sweep of orphans.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from dispatcher import holding
from dispatcher.rules import classify, ledger
from runtime import bodystore, bus
from schemas import mail

log = structlog.get_logger("dispatcher.recording")

_encoder = msgspec.json.Encoder()

BACKLOG_MAX = 10_000
"""Cleanups kept for retrying; beyond this the oldest is left to the sweep."""
UNCONFIRMED_KEPT = 10_000
"""Stream sequences settled with an unconfirmed ack, remembered (the newest) so a
redelivery of one reads its record whatever its delivery count says."""


@dataclass(frozen=True)
class Cleanup:
    """What is left to remove of a mail that left (or is leaving) the MAIL stream."""

    key: str
    """The attempts key."""
    record: bool
    """An attempt record is stored under ``key``."""
    body: str | None
    """The name of the body object to remove, if any."""
    seq: int = 0
    """The MAIL stream sequence whose ack is unconfirmed: clean up only once the stream no
    longer holds it (else its redelivery finishes the mail and cleans up itself); 0: the
    ack is confirmed."""
    tries: int = 0


@dataclass
class Backlog:
    """Cleanups that could not run yet (an unconfirmed ack, a broker away), for `sweeping`
    to retry; bounded: what falls out is left to the sweep of orphans."""

    items: collections.deque[Cleanup] = field(
        default_factory=lambda: collections.deque(maxlen=BACKLOG_MAX))
    unconfirmed: collections.OrderedDict[int, None] = field(
        default_factory=collections.OrderedDict)
    settled: collections.OrderedDict[int, tuple[str, bytes]] = field(
        default_factory=collections.OrderedDict)
    """The newest MAIL stream sequences this process settled (every recipient delivered
    or dead), with the mail id and the finished record. A nats-server killed before it
    wrote the ack down hands such a message out again as a first delivery, and the record
    in the bucket may be gone (cleaned up after a confirmed ack) or never written (the
    broker was away): this copy still says nothing is left to send. Kept encoded: ten
    thousand records as objects (their lists, tuples and strings) were long-lived garbage
    collector work, every full collection walking them, about a sixth of the dispatcher's
    CPU once it had settled that many; bytes are not the collector's."""

    def was_unconfirmed(self, seq: int) -> bool:
        return seq in self.unconfirmed

    def remember_settled(self, seq: int, mail_id: str, record: mail.AttemptRecord) -> None:
        self.settled[seq] = (mail_id, _encoder.encode(record))
        self.settled.move_to_end(seq)
        while len(self.settled) > UNCONFIRMED_KEPT:
            self.settled.popitem(last=False)

    def settled_record(self, seq: int, mail_id: str) -> mail.AttemptRecord | None:
        """The finished record of ``seq`` if this process settled it as ``mail_id``."""
        known = self.settled.get(seq)
        if known is None or known[0] != mail_id:
            return None
        return mail.attempt_decoder.decode(known[1])

    def add(self, cleanup: Cleanup) -> None:
        if len(self.items) == self.items.maxlen:
            log.warning("dispatcher.cleanup_abandoned", key=self.items[0].key,
                        reason="backlog full")
        self.items.append(cleanup)
        if cleanup.seq:
            self.unconfirmed[cleanup.seq] = None
            while len(self.unconfirmed) > UNCONFIRMED_KEPT:
                self.unconfirmed.popitem(last=False)

    def take(self) -> list[Cleanup]:
        out = list(self.items)
        self.items.clear()
        return out


@dataclass(frozen=True)
class Stores:
    """The bus handles a mail's records live in."""

    conn: bus.Conn
    attempts: KeyValue
    bodies: ObjectStore
    backlog: Backlog = field(default_factory=Backlog)


async def open_stores(conn: bus.Conn) -> Stores:
    """The ATTEMPTS bucket and the BODIES store of ``conn``'s bus."""
    return Stores(conn=conn, attempts=await bus.attempts_kv(conn), bodies=await bus.bodies(conn))


async def read(stores: Stores, msg: holding.Held, env: mail.Envelope
               ) -> tuple[mail.AttemptRecord, bool]:
    """The stored attempt record and whether there is one, read only when there can be
    one: the message was delivered before, it is a replay (which has its own record) or an
    operator's copy (``moved_from``: queue retry/move, the record of the original), or this
    process settled it with an unconfirmed ack (a restarted broker may hand it out again as
    a first delivery, having lost its consumer state). A sequence this process settled
    (`Backlog.settled`) whose record is not in the bucket gets the record it finished
    with, so nothing is sent again. A record that does not decode
    counts as stored (it must be deleted at the end)."""
    here = stores.backlog.settled_record(msg.seq, env.id)
    if (env.replay_of is None and env.moved_from is None and msg.metadata.num_delivered <= 1
            and not stores.backlog.was_unconfirmed(msg.seq) and here is None):
        return mail.AttemptRecord(), False
    try:
        async with asyncio.timeout(stores.conn.deadlines.kv_s):
            entry = await stores.attempts.get(mail.attempts_key(env))
    except nats.js.errors.KeyNotFoundError:
        return (here, False) if here is not None else (mail.AttemptRecord(), False)
    if entry.value is None:
        return (here, False) if here is not None else (mail.AttemptRecord(), False)
    try:
        return mail.attempt_decoder.decode(entry.value), True
    except msgspec.DecodeError:
        log.error("dispatcher.attempt_record_invalid")
        return mail.AttemptRecord(), True


async def body(stores: Stores, env: mail.Envelope) -> bytes | None:
    """The stored message, inline or from the object store; None when it is gone."""
    return await bus.read_body(stores.bodies, env, stores.conn.deadlines.body_s,
                               stores.conn.link)


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
    (when ``body_ref`` is given); a failure is logged and queued on the backlog."""
    cleanup = Cleanup(key=key, record=had_record,
                      body=body_ref.name if body_ref is not None else None)
    if cleanup.record or cleanup.body is not None:
        await clean(stores, cleanup)


async def clean(stores: Stores, cleanup: Cleanup) -> bool:
    """Run one cleanup whose ack is confirmed; whether it is done. A failure is logged and
    the cleanup queued again (with one more try)."""
    try:
        if cleanup.record:
            async with asyncio.timeout(stores.conn.deadlines.kv_s):
                await stores.attempts.delete(cleanup.key)
            cleanup = Cleanup(key=cleanup.key, record=False, body=cleanup.body,
                              tries=cleanup.tries)
        if cleanup.body is not None:
            await bodystore.purge(stores.conn, stores.bodies, cleanup.body)
    except bus.TRANSIENT as exc:
        log.warning("dispatcher.cleanup_failed", key=cleanup.key, tries=cleanup.tries + 1,
                    record=cleanup.record, body=cleanup.body is not None,
                    error=str(exc) or repr(exc))
        stores.backlog.add(Cleanup(key=cleanup.key, record=cleanup.record,
                                   body=cleanup.body, tries=cleanup.tries + 1))
        return False
    return True
