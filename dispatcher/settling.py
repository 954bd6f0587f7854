"""Acting on a `classify.Decision`: persist what replaces the message, then ack or nak it.

The order is the point of this module. Nothing is acked before the thing that replaces
it is stored:

1. each dead group is published to the DEAD stream (``Nats-Msg-Id`` from the mail and
   its recipients, so a retry after a lost PubAck stores it once) and its PubAck awaited;
2. the attempt record is written (attempts, settled recipients, next attempt) whenever
   the message will come back, so a redelivery never sends to a settled recipient again;
3. then ``nak(delay=...)`` if any recipient is deferred, else ``ack_sync``; only after a
   confirmed ack are the attempt record and (when nobody was dead-lettered, who might be
   replayed) the body object deleted.

A crash anywhere in between leaves the message unacked: it is redelivered after
``ack_wait_s`` and the record says what is already done. Then the events, one log line
per group, and the counters: a mail counts once under each fate its recipients got.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from dispatcher.rules import classify, ledger
from runtime import bus, eventing, metrics
from schemas import events, mail

log = structlog.get_logger("dispatcher.settling")

PUBLISH_TIMEOUT_S = 10.0
"""Deadline for a PubAck (dead letters, caught mail) and for KV writes."""
ACK_TIMEOUT_S = 5.0
"""Deadline for the server to confirm an ack (``ack_sync``)."""

_encoder = msgspec.json.Encoder()
_NO_RECORD = mail.AttemptRecord()


@dataclass(frozen=True)
class Stores:
    """The bus handles settling writes to."""

    conn: bus.Conn
    attempts: KeyValue
    bodies: ObjectStore


@dataclass(frozen=True)
class Mail:
    """The message being settled and what is known about it."""

    msg: Msg
    envelope: mail.Envelope
    record: mail.AttemptRecord
    had_record: bool
    """True when an attempt record is stored for it (it must be deleted at the end)."""
    policy: str
    upstream: str


async def settle(stores: Stores, item: Mail, decision: classify.Decision, now: datetime) -> None:
    """Persist, then ack or nak, then report; see the module docstring for the order."""
    env = item.envelope
    key = mail.attempts_key(env)
    record = ledger.after(item.record, decision, now=now, policy=item.policy,
                          upstream=item.upstream)
    for verdict in decision.of(classify.Fate.DEAD):
        await _dead_letter(stores, item, verdict, record, key, now)
    if decision.settled:
        await _finish(stores, item, record, key)
    else:
        if decision.attempt > 0 or record.done != item.record.done:
            await _put_record(stores, key, record)  # a mere hold changes nothing worth it
        await item.msg.nak(delay=decision.delay_s)
    await _report(stores.conn, item, decision, now)
    count(item, decision, now)


def count_delivered(item: Mail, now: datetime) -> None:
    """One mail delivered (by an upstream or the catcher), and how long it took."""
    m = metrics.current()
    m.delivered.labels(item.upstream, item.policy).inc()
    m.latency.labels(item.upstream).observe(
        max(0.0, (now - item.envelope.received_at).total_seconds()))


def count(item: Mail, decision: classify.Decision, now: datetime) -> None:
    """The dispatcher's counters for one settled decision; a hold counts nothing."""
    m = metrics.current()
    up, policy = item.upstream, item.policy
    if decision.of(classify.Fate.DELIVERED):
        count_delivered(item, now)
    for fate in sorted({str(v.dead_fate or classify.DeadFate.PERMANENT)
                        for v in decision.of(classify.Fate.DEAD)}):
        m.dead.labels(up, policy, fate).inc()
    if decision.of(classify.Fate.RETRY) and decision.attempt > 0:
        m.deferred.labels(up, policy).inc()


async def _dead_letter(
    stores: Stores, item: Mail, verdict: classify.Verdict, record: mail.AttemptRecord,
    key: str, now: datetime,
) -> None:
    letter = mail.DeadLetter(
        envelope=msgspec.structs.replace(item.envelope, rcpt_to=list(verdict.rcpts)),
        fate=str(verdict.dead_fate or classify.DeadFate.PERMANENT),
        reason=verdict.reason,
        code=verdict.code,
        reply=verdict.reply,
        attempts=record.attempts,
        first_attempt_at=record.first_attempt_at,
        last_attempt_at=record.last_attempt_at,
        dead_at=now,
    )
    async with asyncio.timeout(PUBLISH_TIMEOUT_S):
        await stores.conn.js.publish(
            stores.conn.names.dead_subject(item.upstream), _encoder.encode(letter),
            headers={"Nats-Msg-Id": ledger.dead_letter_id(key, verdict.rcpts)},
        )


async def _put_record(stores: Stores, key: str, record: mail.AttemptRecord) -> None:
    async with asyncio.timeout(PUBLISH_TIMEOUT_S):
        await stores.attempts.put(key, _encoder.encode(record))


async def _finish(stores: Stores, item: Mail, record: mail.AttemptRecord, key: str) -> None:
    """Every recipient is settled: ack, and only once the ack is confirmed clean up."""
    try:
        await item.msg.ack_sync(timeout=ACK_TIMEOUT_S)
    except (nats.errors.Error, TimeoutError) as exc:
        # The ack may or may not have landed. If not, the message comes back: make sure
        # the record says everything is settled, so nothing is sent again.
        log.warning("dispatcher.ack_unconfirmed", error=str(exc) or repr(exc))
        if record != _NO_RECORD:
            await _put_record(stores, key, record)
        return
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            if item.had_record:
                await stores.attempts.delete(key)
            ref = item.envelope.body_ref
            if ref is not None and not record.dead:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await stores.bodies.delete(ref.name)


async def _report(conn: bus.Conn, item: Mail, decision: classify.Decision, now: datetime) -> None:
    """The events of this decision and one log line per group (mail_id, policy and
    upstream are bound in the context by the worker)."""
    env = item.envelope
    for verdict in decision.verdicts:
        rcpts = list(verdict.rcpts)
        if verdict.fate is classify.Fate.DELIVERED:
            await eventing.emit(conn, events.Delivered(
                mail_id=env.id, at=now, policy=item.policy, upstream=item.upstream,
                attempt=decision.attempt, code=verdict.code, reply=verdict.reply,
                rcpt_to=rcpts))
            log.info("dispatcher.mail_delivered", attempt=decision.attempt,
                     smtp_code=verdict.code, rcpt_count=len(rcpts))
        elif verdict.fate is classify.Fate.DEAD:
            fate = str(verdict.dead_fate or classify.DeadFate.PERMANENT)
            await eventing.emit(conn, events.Dead(
                mail_id=env.id, at=now, policy=item.policy, upstream=item.upstream,
                fate=fate, code=verdict.code, reply=verdict.reply, rcpt_to=rcpts))
            log.warning("dispatcher.mail_dead_lettered", attempt=decision.attempt,
                        smtp_code=verdict.code, fate=fate, reason=verdict.reason,
                        rcpt_count=len(rcpts))
        elif decision.attempt > 0:
            await eventing.emit(conn, events.Deferred(
                mail_id=env.id, at=now, policy=item.policy, upstream=item.upstream,
                retry_in_s=verdict.delay_s, attempt=decision.attempt,
                code=verdict.code, reply=verdict.reply, rcpt_to=rcpts))
            log.info("dispatcher.delivery_deferred", attempt=decision.attempt,
                     smtp_code=verdict.code, retry_in_s=round(verdict.delay_s, 3),
                     reason=verdict.reason, rcpt_count=len(rcpts))
        else:  # held without an attempt: no event, the mail's history did not change
            log.info("dispatcher.delivery_held", retry_in_s=round(verdict.delay_s, 3),
                     reason=verdict.reason, rcpt_count=len(rcpts))
