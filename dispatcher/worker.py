"""The worker of one durable consumer: the fetch loop, the upstream's slots, keepalive and
the lifecycle; each message's trip is `delivery`'s, its fate `settling`'s.

Per (upstream, policy) consumer it fetches only what it can work on now: no more than the
free connection slots of the upstream (`Gate`, shared by every consumer of that upstream
in this process, handed out first come, first served) and no more than the rate limiter
grants (`limiting`), up to ``batch``. A consumer whose last fetch found nothing waits for
mail with one slot (and one token), so an idle or rate-limited policy never holds back a
busy one on the same upstream; one that caught up (a fetch found less than it asked for,
or woke from waiting) waits ``gather_s`` before the next, so a steady trickle of mail is
fetched a few at a time instead of a pull request or two per mail. Nothing is fetched
before the first policy snapshot: until then the rate limits are unknown. Each message is
handled in its own task (`delivery.handle`), behind a bulkhead: broker trouble or a bug
in one message is logged and that message naked (`settling.failed`), the worker goes on.

In-flight messages are `holding.Held`, keyed by stream sequence: a message JetStream hands
back while this process still holds it (a freeze past ``ack_wait_s``, a broker restart)
renews the held one (its newer handle is the one acked) and starts no second trip; its
slot and rate token are given back at once. A message that takes longer than a third of
``ack_wait_s`` is kept alive with ``in_progress()`` while the link is up and its lease has
not run out. On quit the worker stops fetching, lets in-flight messages finish
within ``grace_s`` and cancels the rest: an unacked message is simply redelivered later,
so correctness never depends on a clean stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass, field

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from dispatcher import consumers, delivery, holding, settling
from dispatcher.rules import limiting
from runtime import bus, waiting
from schemas import names

log = structlog.get_logger("dispatcher.worker")

FETCH_WAIT_S = 2.0
"""How long one pull request waits for messages: it bounds how late a stop is noticed."""


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

    trip: delivery.Context
    """What each message's trip uses (settings, snapshot, pool, stores, keyring)."""
    limiter: limiting.Limiter
    gates: dict[str, Gate] = field(default_factory=dict)

    def gate(self, upstream: str) -> Gate:
        return self.gates.setdefault(upstream, Gate())


async def run(
    shared: Shared, pair: consumers.Pair, sub: JetStreamContext.PullSubscription,
    quit_: asyncio.Event,
) -> None:
    """Fetch and handle until ``quit_``; then drain within ``grace_s``."""
    inflight: dict[int, holding.Held] = {}
    """By stream sequence: one entry however often JetStream hands the message out."""
    tasks: set[asyncio.Task[None]] = set()
    drained = asyncio.Event()
    cfg = shared.trip.cfg
    ack_wait_s = cfg.dispatcher.ack_wait_s
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_keepalive(shared.trip.stores.conn.link, ack_wait_s, inflight, drained))
        lane = _Lane()
        while not quit_.is_set():
            for msg in await _fetch(shared, pair, sub, quit_, lane):
                held = inflight.get(msg.metadata.sequence.stream)
                if held is not None:
                    held.renew(msg, loop.time())
                    log.info("dispatcher.redelivery_joined", upstream=pair.upstream,
                             policy=pair.policy, seq=held.seq, handouts=held.handouts)
                    await _give_back(shared, pair)
                    continue
                held = holding.Held(msg, loop.time(), ack_wait_s,
                                    shared.trip.stores.conn.link.changes)
                inflight[held.seq] = held
                task = tg.create_task(_one(shared, pair, held, inflight))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            _, late = await asyncio.wait(set(tasks), timeout=cfg.grace_s)
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
    short: bool = False
    """The last fetch found some mail but less than it asked for: gather before the next."""


async def _fetch(
    shared: Shared, pair: consumers.Pair, sub: JetStreamContext.PullSubscription,
    quit_: asyncio.Event, lane: _Lane,
) -> list[Msg]:
    """At most as many messages as there are free slots and rate-limit tokens."""
    cfg = shared.trip.cfg.dispatcher
    holder = shared.trip.holder
    if lane.short and cfg.gather_s > 0:
        lane.short = False
        await waiting.sleep_or_stop(quit_, cfg.gather_s)
    if holder.current is None:
        # The policy's rate limit is unknown until the first snapshot: fetch nothing yet.
        await waiting.sleep_or_stop(holder.loaded, FETCH_WAIT_S)
        return []
    snap = holder.current
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
        was_idle = lane.idle
        msgs = await sub.fetch(granted, timeout=FETCH_WAIT_S)
        lane.idle = not msgs
        # woken by a trickle, or caught up: gather a few before the next pull request
        lane.short = bool(msgs) and (was_idle or len(msgs) < granted)
    except TimeoutError:  # nats' fetch timeouts are asyncio.TimeoutErrors: nothing queued
        lane.idle = True
    except bus.TRANSIENT as exc:
        log.warning("dispatcher.fetch_failed", upstream=pair.upstream, policy=pair.policy,
                    error=str(exc) or repr(exc))
        await waiting.sleep_or_stop(quit_, FETCH_WAIT_S)
    finally:
        gate.release(granted - len(msgs))
        await shared.limiter.refund(pair.policy, ratelimit, granted - len(msgs))
    return msgs


async def _give_back(shared: Shared, pair: consumers.Pair) -> None:
    """The slot and the rate token of a hand-out that started no trip."""
    shared.gate(pair.upstream).release(1)
    snap = shared.trip.holder.current
    view = snap.policies.get(pair.policy) if snap else None
    await shared.limiter.refund(pair.policy, view.ratelimit if view else None, 1)


async def _keepalive(
    link: bus.Link, ack_wait_s: float, inflight: dict[int, holding.Held],
    drained: asyncio.Event,
) -> None:
    """Tell the server every message held longer than a third of ``ack_wait_s`` is still
    being worked on, so a slow delivery is not handed to another replica meanwhile. Only
    a live lease is kept alive, and only on a live link: a word buffered while the link is
    down may never reach the server, so it does not count."""
    period = max(ack_wait_s / 3, 0.05)
    while not drained.is_set():
        await waiting.sleep_or_stop(drained, period)
        now = asyncio.get_running_loop().time()
        for held in list(inflight.values()):
            if now - held.told_at < period or held.is_acked or not held.leased(now):
                continue
            with contextlib.suppress(*bus.TRANSIENT):
                await held.in_progress()
                if link.is_up:
                    held.kept_alive(now)


async def _one(
    shared: Shared, pair: consumers.Pair, held: holding.Held,
    inflight: dict[int, holding.Held],
) -> None:
    """Handle one message; the bulkhead that keeps one bad message from stopping the
    worker: broker trouble and bugs alike are logged and the message comes back later."""
    try:
        await delivery.handle(shared.trip, pair, held)
    except Exception as exc:  # the bulkhead: settling.failed logs it (a bug with its traceback)
        await settling.failed(held, exc)
    finally:
        inflight.pop(held.seq, None)
        shared.gate(pair.upstream).release(1)
        structlog.contextvars.clear_contextvars()
