"""The durable pull consumers of the MAIL stream, and which of them this replica serves.

There is one durable consumer per (upstream, policy) pair, named by
`names.Bus.consumer_name` and filtered on that pair's subject. Every dispatcher replica
binds to the same durable, so JetStream hands each message to one of them at a time and
load-balances their pull requests; replicas come and go without losing or duplicating
mail. Pairs are re-derived every ``discovery_interval_s`` from the policy snapshot *and*
from the subjects that hold messages in the stream, so mail queued for a policy that has
since moved to another upstream (or was deleted) still drains. ``cfg.dispatcher.upstreams``
restricts a replica to some upstreams, so a busy one can get its own pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, NamedTuple

import structlog
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from runtime import bus, policies, waiting
from runtime import settings as settings_mod
from schemas import names, snapshot

log = structlog.get_logger("dispatcher.consumers")


class Pair(NamedTuple):
    upstream: str
    policy: str


Work = Callable[
    [Pair, JetStreamContext.PullSubscription, asyncio.Event], Coroutine[Any, Any, None]]
"""A worker for one pair: runs until its Event is set, then drains and returns."""


def wanted(
    snap: snapshot.PolicySnapshot | None, queued: Iterable[Pair], serve: Sequence[str]
) -> set[Pair]:
    """The pairs to consume: every policy's current route and fallbacks plus every pair
    with mail queued, limited to the upstreams in ``serve`` (all when empty)."""
    pairs = set(queued)
    if snap is not None:
        pairs |= {Pair(view.upstream, view.key) for view in snap.policies.values()}
        pairs |= {Pair(f.upstream, view.key) for view in snap.policies.values()
                  for f in view.fallbacks}
    if serve:
        allowed = set(serve)
        pairs = {pair for pair in pairs if pair.upstream in allowed}
    return pairs


async def queued(conn: bus.Conn, serve: Sequence[str]) -> set[Pair]:
    """The pairs whose subjects hold messages in the MAIL stream now."""
    filters = [conn.names.mail_filter(upstream) for upstream in serve] or [
        conn.names.mail_filter()]
    pairs: set[Pair] = set()
    for subject_filter in filters:
        async with asyncio.timeout(conn.deadlines.api_s):
            info = await conn.js.stream_info(conn.names.mail_stream,
                                             subjects_filter=subject_filter)
        for subject, count in (info.state.subjects or {}).items():
            if count <= 0:
                continue
            try:
                pairs.add(Pair(*conn.names.parse_mail_subject(subject)))
            except names.InvalidKey:
                log.warning("dispatcher.subject_ignored", subject=subject)
    return pairs


def consumer_config(
    bus_names: names.Bus, pair: Pair, cfg: settings_mod.DispatcherSettings
) -> ConsumerConfig:
    name = bus_names.consumer_name(pair.upstream, pair.policy)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"podpost: mail of {pair.policy} for {pair.upstream}",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=cfg.ack_wait_s,
        max_deliver=-1,  # podpost counts attempts itself and gives up by age, not count
        filter_subject=bus_names.mail_subject(pair.upstream, pair.policy),
    )


async def subscribe(
    conn: bus.Conn, pair: Pair, cfg: settings_mod.DispatcherSettings
) -> JetStreamContext.PullSubscription:
    """Create (or update to our settings) the pair's durable consumer and bind to it.
    Creating an identical consumer is a no-op, so replicas may race here."""
    config = consumer_config(conn.names, pair, cfg)
    async with asyncio.timeout(conn.deadlines.api_s):
        await conn.js.add_consumer(conn.names.mail_stream, config=config)
    return await conn.js.pull_subscribe_bind(
        durable=config.durable_name, stream=conn.names.mail_stream)


class _Running(NamedTuple):
    quit: asyncio.Event
    task: asyncio.Task[None]
    sub: JetStreamContext.PullSubscription


async def run(
    conn: bus.Conn, cfg: settings_mod.Settings, holder: policies.SnapshotHolder, work: Work,
    stop: asyncio.Event,
) -> None:
    """Keep one worker per wanted pair until ``stop``; then tell each to drain and wait
    for them (they bound their own drain by ``grace_s``)."""
    serve = cfg.dispatcher.upstreams
    running: dict[Pair, _Running] = {}
    try:
        async with asyncio.TaskGroup() as tg:
            while not stop.is_set():
                for pair in [p for p, r in running.items() if r.task.done()]:
                    await _unsubscribe(conn, running.pop(pair).sub)
                try:
                    pairs = wanted(holder.current, await queued(conn, serve), serve)
                except bus.TRANSIENT as exc:
                    log.warning("dispatcher.discovery_failed", error=str(exc) or repr(exc))
                    pairs = set(running)
                for pair in sorted(pairs - set(running)):
                    try:
                        sub = await subscribe(conn, pair, cfg.dispatcher)
                    except bus.TRANSIENT as exc:
                        log.warning("dispatcher.consumer_failed", upstream=pair.upstream,
                                    policy=pair.policy, error=str(exc) or repr(exc))
                        continue
                    quit_ = asyncio.Event()
                    task = tg.create_task(work(pair, sub, quit_),
                                          name=f"worker {pair.upstream} {pair.policy}")
                    running[pair] = _Running(quit_, task, sub)
                    log.info("dispatcher.consumer_started", upstream=pair.upstream,
                             policy=pair.policy)
                for pair in set(running) - pairs:
                    if not running[pair].quit.is_set():
                        running[pair].quit.set()
                        log.info("dispatcher.consumer_stopped", upstream=pair.upstream,
                                 policy=pair.policy)
                await waiting.sleep_or_stop(stop, cfg.dispatcher.discovery_interval_s)
            for entry in running.values():
                entry.quit.set()
    finally:
        for entry in running.values():
            await _unsubscribe(conn, entry.sub)


async def _unsubscribe(conn: bus.Conn, sub: JetStreamContext.PullSubscription) -> None:
    with contextlib.suppress(*bus.TRANSIENT):
        async with asyncio.timeout(conn.deadlines.close_s):
            await sub.unsubscribe()
