"""Acting on what became of a message: report what the upstream accepted, persist what
replaces the message, then ack or nak it, then report the rest. The only dispatcher module
that acks, naks or terminates a message, emits its events, logs its outcome line and counts
it; what it persists goes through `recording`.

The order is the point of this module:

0. what the upstream accepted is on the record first, before anything that can fail: the
   ``dispatcher.mail_delivered`` line and the delivered counter at once, the ``delivered``
   event stored on the EVENTS stream (its PubAck awaited, `eventing.record`) alongside the
   steps below. A copy that reached the upstream is reported even when the ack is lost
   and the mail goes out again; that later copy is marked ``redelivered``.
1. each dead group is published to the DEAD stream (`recording.dead_letter`) and its
   PubAck awaited;
2. the attempt record is written (attempts, settled recipients, next attempt) whenever
   the message will come back, so a redelivery never sends to a settled recipient again;
3. then ``nak(delay=...)`` if any recipient is deferred, else ``ack_sync`` (tried again
   on the newest hand-out once the link is back); only after a confirmed ack are the
   attempt record and (when nobody was dead-lettered, who might be replayed) the body
   deleted (`recording.forget`). An ack left unconfirmed writes the finished record and
   leaves the check to `recording.Backlog`: once the message is gone from the stream the
   cleanup runs; a failed cleanup is logged and retried there, then left to the sweep.

The catcher's mail follows the same rule: its copy on the CAUGHT stream is stored before
the ack (`catch`). A crash anywhere in between leaves the message unacked: it is
redelivered after ``ack_wait_s`` and the record says what is already done. Then the other
events, one log line per group, and the counters: a mail counts once under each fate its
recipients got.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import msgspec
import structlog

from dispatcher import holding, recording
from dispatcher.rules import classify, ledger
from runtime import bus, eventing, metrics, scanning
from schemas import events, mail

log = structlog.get_logger("dispatcher.settling")

FAILED_DELAY_S = 5.0
"""Redelivery delay after the broker failed us mid-message, or a bug did."""

ACK_TRIES = 3
"""An ack left unconfirmed is tried again (on the newest hand-out, once the link is up)."""

_NO_RECORD = mail.AttemptRecord()


class LeaseLost(Exception):
    """The trip's lease ran out before the upstream was asked (`holding`): someone else
    has, or will have, the message; it is neither acked nor naked here."""


@dataclass(frozen=True)
class Mail:
    """The message being settled and what is known about it."""

    msg: holding.Held
    envelope: mail.Envelope
    record: mail.AttemptRecord
    had_record: bool
    """True when an attempt record is stored for it (it must be deleted at the end)."""
    policy: str
    upstream: str
    redelivered: bool = False
    """JetStream handed this message out before and no attempt record says how that ended:
    an earlier copy may have reached the upstream (or the earlier hand-out was a hold)."""


async def settle(
    stores: recording.Stores, item: Mail, decision: classify.Decision, now: datetime
) -> None:
    """Report what was accepted, persist, then ack or nak, then report the rest; see the
    module docstring for the order."""
    env = item.envelope
    key = mail.attempts_key(env)
    record = ledger.after(item.record, decision, now=now, policy=item.policy,
                          upstream=item.upstream)
    stored = _report_delivered(stores.conn, item, decision, now)
    try:
        for verdict in decision.of(classify.Fate.DEAD):
            await recording.dead_letter(stores, env, item.upstream, verdict, record, key, now)
        if decision.settled:
            await _finish(stores, item, record, key)
        else:
            if decision.attempt > 0 or record.done != item.record.done:
                await recording.put(stores, key, record)  # a mere hold changes nothing
            await item.msg.nak(delay=decision.delay_s)
    except asyncio.CancelledError:
        stored.cancel()
        raise
    finally:
        if not stored.cancelled():
            await stored  # never raises: eventing.record logs its own failure
    await _report(stores.conn, item, decision, now)
    count(item, decision, now)


async def fail_over(
    stores: recording.Stores, item: Mail, decision: classify.Decision, to_upstream: str,
    now: datetime,
) -> None:
    """Move a mail to the policy's next upstream, durably, like ``queue move``: the dead
    letters and the attempt record (with ``moved_to``, and the settled recipients, so
    the copy sends only to the others) first, then the copy on ``to_upstream``'s subject
    (dedupe id from mail id and target) with its PubAck, then the original's ack. A
    crash in between redelivers the original, which stores the copy again (the same
    dedupe id: stored once) and is removed (`moved_again`)."""
    env = item.envelope
    record = msgspec.structs.replace(
        ledger.after(item.record, decision, now=now, policy=item.policy,
                     upstream=item.upstream), moved_to=to_upstream,
        moved_seq=item.msg.metadata.sequence.stream)
    key = mail.attempts_key(env)
    for verdict in decision.of(classify.Fate.DEAD):
        await recording.dead_letter(stores, env, item.upstream, verdict, record, key, now)
    copy = msgspec.structs.replace(env, upstream=to_upstream,
                                   moved_from=item.msg.metadata.sequence.stream)
    await recording.put(stores, key, record)
    if mail.attempts_key(copy) != key:
        await recording.put(stores, mail.attempts_key(copy), record)
    to_seq = await _store_copy(stores.conn, copy, to_upstream)
    try:
        await _ack(stores.conn, item.msg)
    except bus.TRANSIENT as exc:  # it comes back and is removed then (moved_to)
        log.warning("dispatcher.ack_unconfirmed", error=str(exc) or repr(exc))
    reported = msgspec.structs.replace(decision, verdicts=[
        v for v in decision.verdicts if v.fate is not classify.Fate.RETRY])
    await _report(stores.conn, item, reported, now)
    count(item, reported, now)
    reason = next((v.reason for v in decision.of(classify.Fate.RETRY)), "")
    await eventing.emit(stores.conn, events.Moved(
        mail_id=env.id, at=now, policy=item.policy, upstream=item.upstream,
        from_seq=item.msg.metadata.sequence.stream, to_seq=to_seq, to_upstream=to_upstream,
        reason=f"failover: {reason}" if reason else "failover"))
    log.warning("dispatcher.mail_failed_over", to_upstream=to_upstream, reason=reason,
                rcpt_count=len(ledger.pending(env, record)))


async def moved_again(stores: recording.Stores, item: Mail, now: datetime) -> None:
    """A redelivered original whose record says it was moved (``moved_to``): store the
    copy again (stored once: the dedupe id) and remove the original; nothing is sent."""
    env = item.envelope
    to_upstream = item.record.moved_to
    copy = msgspec.structs.replace(env, upstream=to_upstream,
                                   moved_from=item.msg.metadata.sequence.stream)
    await _store_copy(stores.conn, copy, to_upstream)
    await _ack(stores.conn, item.msg)
    log.info("dispatcher.move_finished", to_upstream=to_upstream)


async def _store_copy(conn: bus.Conn, copy: mail.Envelope, to_upstream: str) -> int:
    async with asyncio.timeout(conn.deadlines.publish_s):
        ack = await conn.js.publish(conn.names.mail_subject(to_upstream, copy.policy),
                                    mail.envelope_encoder.encode(copy),
                                    headers={"Nats-Msg-Id": mail.failover_msg_id(
                                        copy.id, to_upstream)})
    return int(ack.seq or 0)


async def catch(stores: recording.Stores, item: Mail, now: datetime) -> None:
    """The catcher sink: keep the mail on the CAUGHT stream, then ack, then report it
    delivered."""
    env = item.envelope
    await recording.caught(stores, env, item.policy, now)
    await item.msg.ack()
    await eventing.emit(stores.conn, events.Delivered(
        mail_id=env.id, at=now, policy=item.policy, upstream=item.upstream,
        reply="kept by the catcher", rcpt_to=list(env.rcpt_to)))
    log.info("dispatcher.mail_caught", rcpt_count=len(env.rcpt_to))
    count_delivered(item, now)


async def attempted(conn: bus.Conn, item: Mail, attempt: int, rcpt_count: int,
                    now: datetime) -> None:
    """An attempt begins: its event, before the upstream is asked."""
    await eventing.emit(conn, events.Attempted(
        mail_id=item.envelope.id, at=now, policy=item.policy, upstream=item.upstream,
        attempt=attempt, rcpt_count=rcpt_count))


async def undecodable(msg: holding.Held, error: str) -> None:
    """A message that is no `mail.Envelope` can never be delivered: terminate it."""
    log.error("dispatcher.mail_undecodable", subject=msg.subject, error=error)
    await msg.term()


async def failed(msg: holding.Held, exc: Exception) -> None:
    """Broker trouble (`bus.TRANSIENT`) or a bug while handling ``msg``: log it (a bug
    with its traceback) and nak it, so it comes back later; called in the except block.
    A lost lease is logged only: the message is someone else's now, a nak would hand it
    out once more."""
    if isinstance(exc, LeaseLost):
        log.warning("dispatcher.lease_lost", seq=msg.seq, reason=str(exc))
        return
    if isinstance(exc, bus.TRANSIENT):
        log.warning("dispatcher.message_failed", error=str(exc) or repr(exc))
    else:
        log.exception("dispatcher.message_failed")
    if not msg.is_acked:
        with contextlib.suppress(*bus.TRANSIENT):
            await msg.nak(delay=FAILED_DELAY_S)


def count_delivered(item: Mail, now: datetime) -> None:
    """One mail delivered (by an upstream or the catcher), and how long it took."""
    m = metrics.current()
    m.delivered.labels(item.upstream, item.policy).inc()
    m.latency.labels(item.upstream).observe(
        max(0.0, (now - item.envelope.received_at).total_seconds()))


def count(item: Mail, decision: classify.Decision, now: datetime) -> None:
    """The dispatcher's counters for one settled decision but its delivered groups (counted
    first, `_report_delivered`); a hold counts nothing."""
    m = metrics.current()
    up, policy = item.upstream, item.policy
    for fate in sorted({str(v.dead_fate or classify.DeadFate.PERMANENT)
                        for v in decision.of(classify.Fate.DEAD)}):
        m.dead.labels(up, policy, fate).inc()
    if decision.of(classify.Fate.RETRY) and decision.attempt > 0:
        m.deferred.labels(up, policy).inc()


def _report_delivered(
    conn: bus.Conn, item: Mail, decision: classify.Decision, now: datetime
) -> asyncio.Task[bool]:
    """What the upstream accepted, before anything can fail: the log line and the counter
    now, and the task storing the ``delivered`` event (awaited by `settle`)."""
    env = item.envelope
    delivered = decision.of(classify.Fate.DELIVERED)
    found: list[events.Delivered] = []
    for verdict in delivered:
        log.info("dispatcher.mail_delivered", attempt=decision.attempt,
                 smtp_code=verdict.code, rcpt_count=len(verdict.rcpts),
                 redelivered=item.redelivered)
        found.append(events.Delivered(
            mail_id=env.id, at=now, policy=item.policy, upstream=item.upstream,
            attempt=decision.attempt, code=verdict.code, reply=verdict.reply,
            rcpt_to=list(verdict.rcpts), redelivered=item.redelivered))
    if delivered:
        count_delivered(item, now)
    # one id per copy sent: a retry of this trip's event is dropped as a duplicate, the
    # event of another copy never is (a broker restart may hand the same sequence out
    # again with the same delivery count)
    handout = f"{mail.attempts_key(env)}.{item.msg.seq}.{secrets.token_hex(6)}"

    async def store() -> bool:
        ok = True
        for index, event in enumerate(found):
            ok = await eventing.record(conn, event, f"{handout}.{index}") and ok
        return ok

    return asyncio.ensure_future(store())


async def _finish(
    stores: recording.Stores, item: Mail, record: mail.AttemptRecord, key: str
) -> None:
    """Every recipient is settled: ack, and only once the ack is confirmed clean up."""
    body = None if record.dead else item.envelope.body_ref
    # Remembered before the ack: a broker killed after confirming the ack but before
    # writing it down hands the message out again as new (tests/e2e/test_crash_held.py).
    stores.backlog.remember_settled(item.msg.seq, item.envelope.id, record)
    try:
        applied = await _ack_applied(stores, item.msg)
    except bus.TRANSIENT as exc:
        applied, why = False, str(exc) or repr(exc)
    else:
        why = "the stream still holds the message after its ack"
    if not applied:
        # The ack may or may not have landed. If not, the message comes back: make sure
        # the record says everything is settled, so nothing is sent again; if it did, the
        # backlog cleans up once the stream no longer holds the message.
        log.warning("dispatcher.ack_unconfirmed", error=why)
        if record != _NO_RECORD:
            await recording.put(stores, key, record)
        stores.backlog.add(recording.Cleanup(
            key=key, record=record != _NO_RECORD, body=body.name if body else None,
            seq=item.msg.seq))
        return
    await recording.forget(stores, key, had_record=item.had_record, body_ref=body)


async def _ack_applied(stores: recording.Stores, msg: holding.Held) -> bool:
    """Ack, and when the link changed since the message was fetched, make sure the ack
    took: a restarted nats-server may have forgotten this hand-out (it writes consumer
    state lazily), ignore its ack and hand the message out again; that new hand-out joins
    this trip (`holding.Held.renew`) and is acked in turn. False: the stream still holds
    the message."""
    conn = stores.conn
    for _ in range(ACK_TRIES):
        seen = msg.handouts
        await _ack(conn, msg)
        if conn.link.changes == msg.link_changes:
            return True
        if await scanning.get(conn, conn.names.mail_stream, msg.seq) is None:
            return True
        await msg.wait_renewed(seen, conn.deadlines.ack_s)
    return False


async def _ack(conn: bus.Conn, msg: holding.Held) -> None:
    """``ack_sync``, tried again `ACK_TRIES` times once the link is up: on the newest
    hand-out, as a broker restart hands held messages out again at once."""
    deadlines = conn.deadlines
    for tried in range(1, ACK_TRIES + 1):
        try:
            await msg.ack_sync(deadlines.ack_s)
            return
        except bus.TRANSIENT:
            if tried == ACK_TRIES:
                raise
            await conn.link.wait_up(deadlines.ack_s)


async def _report(conn: bus.Conn, item: Mail, decision: classify.Decision, now: datetime) -> None:
    """The events of this decision and one log line per group but the delivered ones
    (mail_id, policy and upstream are bound in the context by `delivery`)."""
    env = item.envelope
    for verdict in decision.verdicts:
        rcpts = list(verdict.rcpts)
        if verdict.fate is classify.Fate.DELIVERED:
            continue  # reported first, by _report_delivered
        if verdict.fate is classify.Fate.DEAD:
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
