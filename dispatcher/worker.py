"""The worker of one durable consumer: fetch, deliver, decide, settle.

Per (upstream, policy) consumer it fetches only what it can work on now: no more than the
free connection slots of the upstream (shared by every consumer of that upstream in this
process, handed out first come, first served) and no more than the rate limiter grants
(`limiting`), up to ``batch``. A consumer whose last fetch found nothing waits for mail
with one slot (and one token), so an idle or rate-limited policy never holds back a busy
one on the same upstream. Nothing is fetched before the first policy snapshot: until then
the rate limits are unknown. Each message is handled in its own task:

decode the `Envelope` -> read the `AttemptRecord` if the message was seen before -> skip
the settled recipients -> the catcher keeps it, or the pool delivers it to the upstream ->
`classify` decides each recipient's fate -> `settling` persists, then acks or naks.

Nothing to try with (no snapshot yet, upstream, policy or login unknown) is a *hold*: a
short nak that is not counted as an attempt. A message that takes longer than a third of
``ack_wait_s`` is kept alive with ``in_progress()``. On quit the worker stops fetching,
lets in-flight messages finish within ``grace_s`` and cancels the rest: an unacked
message is simply redelivered later, so correctness never depends on a clean stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dispatcher import consumers, keyring, settling
from dispatcher.rules import backoff, classify, ledger, limiting
from dispatcher.rules import outcome as outcome_mod
from runtime import eventing, policies
from runtime import settings as settings_mod
from schemas import events, mail, names, snapshot

log = structlog.get_logger("dispatcher.worker")

FETCH_WAIT_S = 2.0
"""How long one pull request waits for messages: it bounds how late a stop is noticed."""
BODY_TIMEOUT_S = 60.0
"""Deadline for reading a body (up to 25 MiB) back from the object store."""
NO_SNAPSHOT_DELAY_S = 1.0
"""Hold before the first snapshot arrived: it comes within a poll or two."""
UNKNOWN_DELAY_S = 5.0
"""Hold when the upstream, policy or login is not (yet) known."""
FAILED_DELAY_S = 5.0
"""Redelivery delay after the broker failed us mid-message, or a bug did."""


class Deliverer(Protocol):
    """What the worker needs of `pool.Pool`."""

    async def deliver(
        self, upstream: snapshot.UpstreamView, creds: snapshot.Credentials | None,
        mail_from: str, rcpts: Sequence[str], data: bytes, *,
        ca: snapshot.TrustedCA | None = None,
    ) -> outcome_mod.Outcome: ...


class Gate:
    """Free delivery slots of one upstream in this process, so a worker fetches no more
    than can be worked on now; the others stay in the stream for other replicas.

    Waiters are served in order: a worker that releases its slots and asks again at once
    queues behind the ones already waiting, so no consumer starves another."""

    def __init__(self) -> None:
        self.used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def reserve(self, size: int, want: int, wait_s: float) -> int:
        """Take up to ``want`` of ``size`` slots, waiting up to ``wait_s`` for one."""
        if self.used >= size or self._waiters:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(wait_s):
                    await waiter
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                if waiter.done():  # woken, but will not take: pass the turn on
                    self._waiters.remove(waiter)
                    self._wake_next()
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        taken = max(0, min(want, size - self.used))
        self.used += taken
        if self.used < size:
            self._wake_next()
        return taken

    def release(self, count: int) -> None:
        if count > 0:
            self.used -= count
            self._wake_next()

    def _wake_next(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return


@dataclass
class Shared:
    """What every worker of one dispatcher process uses."""

    cfg: settings_mod.Settings
    holder: policies.SnapshotHolder
    pool: Deliverer
    limiter: limiting.Limiter
    stores: settling.Stores
    keyring: keyring.Keyring
    gates: dict[str, Gate] = field(default_factory=dict)

    def gate(self, upstream: str) -> Gate:
        return self.gates.setdefault(upstream, Gate())


def _now() -> datetime:
    return datetime.now(UTC)


async def run(
    shared: Shared, pair: consumers.Pair, sub: JetStreamContext.PullSubscription,
    quit_: asyncio.Event,
) -> None:
    """Fetch and handle until ``quit_``; then drain within ``grace_s``."""
    inflight: dict[str, tuple[Msg, float]] = {}
    """By reply subject (unique per delivery): the message and when it was fetched."""
    tasks: set[asyncio.Task[None]] = set()
    drained = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_keepalive(shared.cfg.dispatcher.ack_wait_s, inflight, drained))
        lane = _Lane()
        while not quit_.is_set():
            for msg in await _fetch(shared, pair, sub, quit_, lane):
                inflight[msg.reply] = (msg, asyncio.get_running_loop().time())
                task = tg.create_task(_one(shared, pair, msg, inflight))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            _, late = await asyncio.wait(set(tasks), timeout=shared.cfg.grace_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("dispatcher.deliveries_cancelled", upstream=pair.upstream,
                            policy=pair.policy, count=len(late))
        drained.set()


@dataclass
class _Lane:
    """What one worker remembers between fetches."""

    idle: bool = False
    """The last fetch found nothing: wait for mail holding one slot, not a batch."""


async def _fetch(
    shared: Shared, pair: consumers.Pair, sub: JetStreamContext.PullSubscription,
    quit_: asyncio.Event, lane: _Lane,
) -> list[Msg]:
    """At most as many messages as there are free slots and rate-limit tokens."""
    cfg = shared.cfg.dispatcher
    if shared.holder.current is None:
        # The policy's rate limit is unknown until the first snapshot: fetch nothing yet.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FETCH_WAIT_S):
                await shared.holder.loaded.wait()
        return []
    snap = shared.holder.current
    up = snap.upstreams.get(pair.upstream) if snap else None
    view = snap.policies.get(pair.policy) if snap else None
    size = cfg.batch if pair.upstream == names.CATCHER else max(
        1, (up.max_connections if up else None) or cfg.max_connections)
    gate = shared.gate(pair.upstream)
    slots = await gate.reserve(size, 1 if lane.idle else cfg.batch, FETCH_WAIT_S)
    if slots == 0 or quit_.is_set():
        gate.release(slots)
        return []
    ratelimit = view.ratelimit if view else None
    granted = await shared.limiter.acquire(pair.policy, ratelimit, slots)
    gate.release(slots - granted)
    if granted == 0:
        await shared.limiter.wait(pair.policy, ratelimit, FETCH_WAIT_S)
        return []
    msgs: list[Msg] = []
    try:
        msgs = await sub.fetch(granted, timeout=FETCH_WAIT_S)
        lane.idle = not msgs
    except TimeoutError:  # nats' fetch timeouts are asyncio.TimeoutErrors: nothing queued
        lane.idle = True
    except nats.errors.Error as exc:
        log.warning("dispatcher.fetch_failed", upstream=pair.upstream, policy=pair.policy,
                    error=str(exc) or repr(exc))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FETCH_WAIT_S):
                await quit_.wait()
    finally:
        gate.release(granted - len(msgs))
        await shared.limiter.refund(pair.policy, ratelimit, granted - len(msgs))
    return msgs


async def _keepalive(
    ack_wait_s: float, inflight: dict[str, tuple[Msg, float]], drained: asyncio.Event
) -> None:
    """Tell the server every message held longer than a third of ``ack_wait_s`` is still
    being worked on, so a slow delivery is not handed to another replica meanwhile."""
    period = max(ack_wait_s / 3, 0.05)
    while not drained.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(period):
                await drained.wait()
        now = asyncio.get_running_loop().time()
        for msg, started in list(inflight.values()):
            if now - started >= period and not msg.is_acked:
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()


async def _one(
    shared: Shared, pair: consumers.Pair, msg: Msg, inflight: dict[str, tuple[Msg, float]]
) -> None:
    """Handle one message; the bulkhead that keeps one bad message from stopping the
    worker: broker trouble and bugs alike are logged and the message comes back later."""
    try:
        await handle(shared, pair, msg)
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        log.warning("dispatcher.message_failed", error=str(exc) or repr(exc))
        await _nak_quietly(msg)
    except Exception:
        log.exception("dispatcher.message_failed")
        await _nak_quietly(msg)
    finally:
        inflight.pop(msg.reply, None)
        shared.gate(pair.upstream).release(1)
        structlog.contextvars.clear_contextvars()


async def _nak_quietly(msg: Msg) -> None:
    if not msg.is_acked:
        with contextlib.suppress(nats.errors.Error):
            await msg.nak(delay=FAILED_DELAY_S)


async def handle(shared: Shared, pair: consumers.Pair, msg: Msg) -> None:
    """One message from fetch to ack or nak."""
    structlog.contextvars.clear_contextvars()
    try:
        env = mail.envelope_decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        log.error("dispatcher.mail_undecodable", subject=msg.subject, error=str(exc))
        await msg.term()
        return
    structlog.contextvars.bind_contextvars(
        mail_id=env.id, policy=pair.policy, upstream=pair.upstream)
    snap = shared.holder.current
    view = snap.policies.get(pair.policy) if snap else None
    retry = backoff.effective(shared.cfg.dispatcher.retry.policy(),
                              view.retry if view else None)
    record, had_record = await _record(shared, msg, env)
    item = settling.Mail(msg=msg, envelope=env, record=record, had_record=had_record,
                         policy=pair.policy, upstream=pair.upstream)
    if pair.upstream == names.CATCHER:
        await _catch(shared, item)
        return
    rcpts = ledger.pending(env, record)
    age = backoff.age_s(env.received_at, _now())
    up = snap.upstreams.get(pair.upstream) if snap else None
    decision: classify.Decision
    if not rcpts:  # settled before, but the ack got lost
        decision = classify.Decision(attempt=0, verdicts=[])
    elif snap is None:
        decision = classify.hold(rcpts, age_s=age, policy=retry,
                                 delay_s=NO_SNAPSHOT_DELAY_S, reason="no policy snapshot yet")
    elif up is None or view is None:
        what = "upstream" if up is None else "policy"
        decision = classify.hold(rcpts, age_s=age, policy=retry, delay_s=UNKNOWN_DELAY_S,
                                 reason=f"{what} not in the snapshot")
    else:
        decision = await _attempt(shared, item, rcpts, up, view, retry)
    await settling.settle(shared.stores, item, decision, _now())


async def _record(shared: Shared, msg: Msg, env: mail.Envelope
                  ) -> tuple[mail.AttemptRecord, bool]:
    """The stored attempt record, read only when there can be one: the message was
    delivered before, or it is a replay (which has its own record)."""
    if env.replay_of is None and msg.metadata.num_delivered <= 1:
        return mail.AttemptRecord(), False
    try:
        async with asyncio.timeout(settling.PUBLISH_TIMEOUT_S):
            entry = await shared.stores.attempts.get(mail.attempts_key(env))
    except nats.js.errors.KeyNotFoundError:
        return mail.AttemptRecord(), False
    if entry.value is None:
        return mail.AttemptRecord(), False
    try:
        return mail.attempt_decoder.decode(entry.value), True
    except msgspec.DecodeError:
        log.error("dispatcher.attempt_record_invalid")
        return mail.AttemptRecord(), True


async def _body(shared: Shared, env: mail.Envelope) -> bytes | None:
    """The stored message, inline or from the object store; None when it is gone."""
    if env.body is not None:
        return env.body
    if env.body_ref is None:
        return None
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            result = await shared.stores.bodies.get(env.body_ref.name)
    except nats.js.errors.NotFoundError:  # ObjectNotFoundError, ObjectDeletedError
        return None
    return result.data


async def _attempt(
    shared: Shared, item: settling.Mail, rcpts: list[str], up: snapshot.UpstreamView,
    view: snapshot.PolicyView, retry: snapshot.RetryPolicy,
) -> classify.Decision:
    env = item.envelope
    creds: snapshot.Credentials | None = None
    if view.credentials:
        creds = await shared.keyring.get(view.credentials)
        if creds is None:
            return classify.hold(rcpts, age_s=backoff.age_s(env.received_at, _now()),
                                 policy=retry, delay_s=UNKNOWN_DELAY_S,
                                 reason="login not in the credentials bucket")
    ca: snapshot.TrustedCA | None = None
    if up.tls_ca:
        ca = await shared.keyring.ca(up.tls_ca)
        if ca is None:
            return classify.hold(rcpts, age_s=backoff.age_s(env.received_at, _now()),
                                 policy=retry, delay_s=UNKNOWN_DELAY_S,
                                 reason="the upstream's tlsCA is not in the credentials bucket")
    data = await _body(shared, env)
    if data is None:
        missing = outcome_mod.Outcome(failure="body", reply="the body object is missing")
        return classify.classify(missing, rcpts, attempt=0, policy=retry,
                                 age_s=backoff.age_s(env.received_at, _now()))
    attempt = item.record.attempts + 1
    structlog.contextvars.bind_contextvars(attempt=attempt)
    await eventing.emit(shared.stores.conn, events.Attempted(
        mail_id=env.id, at=_now(), policy=item.policy, upstream=item.upstream,
        attempt=attempt, rcpt_count=len(rcpts)))
    result = await shared.pool.deliver(up, creds, env.mail_from, rcpts, data, ca=ca)
    return classify.classify(result, rcpts, attempt=attempt, policy=retry,
                             age_s=backoff.age_s(env.received_at, _now()))


async def _catch(shared: Shared, item: settling.Mail) -> None:
    """The catcher sink: keep the mail on the CAUGHT stream (deduplicated by the mail's
    attempts key, so a redelivery is kept once), then ack."""
    env = item.envelope
    now = _now()
    conn = shared.stores.conn
    caught = mail.Caught(envelope=env, caught_at=now)
    async with asyncio.timeout(settling.PUBLISH_TIMEOUT_S):
        await conn.js.publish(
            conn.names.caught_subject(item.policy), mail.envelope_encoder.encode(caught),
            headers={"Nats-Msg-Id": mail.attempts_key(env)})
    await item.msg.ack()
    await eventing.emit(conn, events.Delivered(
        mail_id=env.id, at=now, policy=item.policy, upstream=item.upstream,
        reply="kept by the catcher", rcpt_to=list(env.rcpt_to)))
    log.info("dispatcher.mail_caught", rcpt_count=len(env.rcpt_to))
    settling.count_delivered(item, now)
