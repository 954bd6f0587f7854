"""The resilience scenarios, shared by the e2e tests (small loads, with assertions) and
``bench/resilience.py`` (larger loads, figures only).

Each starts its own nats-server (or 3-node cluster), an in-process upstream and real
``podpost`` processes, runs a `relay.Load`, breaks something in the middle of it, and
returns the `relay.Figures`: lost, duplicated, refusals seen by clients, crashes, peak RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loadkit import jetstream
from loadkit import relay as relay_mod
from loadkit import upstream as upstream_mod
from podpost import natsserver
from schemas import names

Breaker = Callable[[relay_mod.Relay, relay_mod.Load], Awaitable[dict[str, Any]]]


async def _delivered_at_least(upstream: upstream_mod.Upstream, tag: str, count: int,
                              timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        await relay_mod.arrivals(upstream, lambda: len(
            relay_mod.count_tokens(upstream.handler.messages, tag)) >= count)


async def _grows(load: relay_mod.Load, by: int, timeout_s: float) -> None:
    """Until ``by`` more messages were confirmed or the load is fully confirmed."""
    with contextlib.suppress(TimeoutError):
        await load.until_confirmed(min(load.count, len(load.confirmed) + by), timeout_s)


async def kill_ingress(relay: relay_mod.Relay, load: relay_mod.Load) -> dict[str, Any]:
    """SIGKILL the ingress a quarter into the load, start it again on the same port."""
    await load.until_confirmed(load.count // 4)
    at_kill = len(load.confirmed)
    await relay.ingress.kill()
    await asyncio.sleep(0.5)
    await relay.ingress.start()
    return {"confirmed_at_kill": at_kill}


async def kill_dispatcher(relay: relay_mod.Relay, load: relay_mod.Load) -> dict[str, Any]:
    """SIGKILL one of the dispatchers once a quarter of the load was delivered, while it
    holds messages; start a fresh one a second later."""
    await _delivered_at_least(relay.upstream, load.tag, load.count // 4)
    victim = relay.dispatchers()[0]
    delivered = len(relay_mod.count_tokens(relay.upstream.handler.messages, load.tag))
    confirmed = len(load.confirmed)
    await victim.kill()
    await asyncio.sleep(1.0)
    await victim.start()
    return {"delivered_at_kill": delivered, "confirmed_at_kill": confirmed}


async def kill_reconciler(relay: relay_mod.Relay, load: relay_mod.Load) -> dict[str, Any]:
    """SIGKILL the reconciler a quarter into the load; the relay goes on without it; start
    it again once a tenth more was accepted."""
    await load.until_confirmed(load.count // 4)
    at_kill = len(load.confirmed)
    await relay.reconciler.kill()
    await _grows(load, load.count // 10, timeout_s=30.0)
    while_down = len(load.confirmed) - at_kill
    await relay.reconciler.start()
    return {"confirmed_at_kill": at_kill, "confirmed_while_down": while_down}


def kill_nats(server: natsserver.NatsServer, down_s: float = 2.0) -> Breaker:
    """SIGKILL nats-server a quarter into the load, keep it down at least ``down_s`` and
    until clients were answered 451, then restart it on the same port and store."""

    async def breaker(relay: relay_mod.Relay, load: relay_mod.Load) -> dict[str, Any]:
        await load.until_confirmed(load.count // 4)
        at_kill = len(load.confirmed)
        await server.kill()
        started = time.monotonic()
        for _ in range(200):  # at most 20 s
            if load.refusals["451"] > 0 and time.monotonic() - started >= down_s:
                break
            await asyncio.sleep(0.1)
        confirmed_while_down = len(load.confirmed) - at_kill
        await server.start()
        return {"confirmed_at_kill": at_kill, "confirmed_while_down": confirmed_while_down,
                "down_s": round(time.monotonic() - started, 1)}

    return breaker


def kill_leaders(cluster: natsserver.Cluster) -> Breaker:
    """SIGKILL the node leading the MAIL stream a quarter into the load; once another
    quarter was accepted start it again, and SIGKILL the node leading the BODIES store
    then (one node down at a time: the quorum of 3 replicas holds)."""

    async def breaker(relay: relay_mod.Relay, load: relay_mod.Load) -> dict[str, Any]:
        bus_names = names.Bus()
        await load.until_confirmed(load.count // 4)
        first = await jetstream.stream_leader(cluster.url, bus_names.mail_stream)
        await cluster.node(first).kill()
        await _grows(load, load.count // 4, timeout_s=40.0)
        await cluster.node(first).start()
        second = await jetstream.stream_leader(
            cluster.url, names.obj_stream(bus_names.bodies_bucket))
        await cluster.node(second).kill()
        await _grows(load, load.count // 8, timeout_s=40.0)
        await cluster.node(second).start()
        return {"killed": [first, second]}

    return breaker


def kill_stream_leader(cluster: natsserver.Cluster) -> Breaker:
    """SIGKILL the cluster node that leads the MAIL stream a quarter into the load."""

    async def breaker(relay: relay_mod.Relay, load: relay_mod.Load) -> dict[str, Any]:
        await load.until_confirmed(load.count // 4)
        leader = await jetstream.stream_leader(cluster.url, names.Bus().mail_stream)
        at_kill = len(load.confirmed)
        await cluster.node(leader).kill()
        return {"killed": leader, "confirmed_at_kill": at_kill}

    return breaker


async def run_load(
    scenario: str, dir: Path, nats_url: str, breaker: Breaker, *, messages: int,
    sessions: int, dispatchers: int = 2, env: dict[str, str] | None = None,
    padding: int = 0, large_every: int = 1,
) -> relay_mod.Figures:
    """Start the relay, run the load with ``breaker`` acting in the middle of it, wait for
    the deliveries and return the figures."""
    upstream = await upstream_mod.start()
    try:
        async with relay_mod.running(dir, nats_url, upstream, dispatchers=dispatchers,
                                     **(env or {})) as relay:
            await relay_mod.wait_ready(relay)
            load = relay_mod.Load(relay.port, messages, tag=scenario, sessions=sessions,
                                  deadline_s=max(90.0, messages / 40), padding=padding,
                                  large_every=large_every)
            started = time.monotonic()
            task = asyncio.create_task(load.run())
            try:
                notes = await breaker(relay, load)
                await task
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            accepted_s = time.monotonic() - started
            counts = await relay_mod.all_delivered(upstream, load, nats_url,
                                                    timeout_s=max(60.0, messages / 50))
            notes["accepted_s"] = round(accepted_s, 1)
            notes["longest_accept_pause_s"] = load.longest_pause_s()
            # a record and a body are removed just after their mail's ack (a failed
            # removal is retried): allow a moment; what a killed process left is the
            # sweep's, which runs on the drained relay (nothing in flight, so no grace)
            # every copy that reached the upstream is on the record: a delivered event
            # (trace) and the dispatchers' counter, however often it arrived
            traced = await jetstream.delivered_events(nats_url)
            for _ in range(50):  # an event whose PubAck a fault lost is stored again
                mismatches = sorted(
                    (index, n, len(marks)) for index, n in counts.items()
                    if len(marks := traced.get(load.mail_ids.get(index, ""), [])) != n)
                if not mismatches:
                    break
                await asyncio.sleep(0.2)
                traced = await jetstream.delivered_events(nats_url)
            notes["trace_mismatches"] = mismatches
            notes["duplicates_marked"] = all(
                sum(traced.get(load.mail_ids.get(index, ""), [])) >= n - 1
                for index, n in counts.items() if n > 1)
            notes["received"] = len(upstream.handler.messages)
            notes["delivered_counted"] = await relay.delivered_counted()
            left = await jetstream.until_clean(nats_url)
            notes["residue_left"] = left
            notes["bodies_left"] = left["objects"]
            notes["swept"] = vars(await jetstream.sweep(nats_url))
            notes["residue_after_sweep"] = await jetstream.residue(nats_url)
            return relay_mod.figures(
                scenario, load, counts, crashes=relay.crashed(), rss=relay.peak_rss(),
                seconds=time.monotonic() - started, **notes)
    finally:
        await upstream.close()


async def crash(role: str, dir: Path, *, messages: int = 2000, sessions: int = 40,
                padding: int = 0) -> relay_mod.Figures:
    """SIGKILL ``role`` (ingress, dispatcher, reconciler or nats) under load; ``padding``
    bytes make each body that much bigger (over the inline limit: the object store)."""
    async with natsserver.running(dir / "nats") as server:
        breakers: dict[str, Breaker] = {
            "ingress": kill_ingress, "dispatcher": kill_dispatcher,
            "reconciler": kill_reconciler, "nats": kill_nats(server)}
        env: dict[str, str] = {}
        if role == "nats":  # clients hear 451 a second after the broker went away
            env["PODPOST_INGRESS__PUBLISH_TIMEOUT_S"] = "1"
        scenario = f"kill-{role}" + ("-large" if padding else "")
        figures = await run_load(scenario, dir / "relay", server.url, breakers[role],
                                 messages=messages, sessions=sessions, env=env,
                                 padding=padding)
        figures.peak_rss_mib["nats-server"] = round(relay_mod.peak_rss_mib(
            server.proc.pid if server.proc else None), 1)
        return figures


async def cluster_failover(dir: Path, *, messages: int = 2000, sessions: int = 40,
                           leaders: bool = False, padding: int = 0, large_every: int = 1,
                           ) -> relay_mod.Figures:
    """A 3-node cluster, 3-replica streams; SIGKILL the MAIL stream's leader under load
    (``leaders``: then the BODIES store's too, `kill_leaders`); ``padding`` bytes on every
    ``large_every``-th message."""
    nodes = natsserver.cluster(dir / "cluster")
    try:
        await nodes.start()
        await jetstream.jetstream_ready(nodes.url)
        breaker = kill_leaders(nodes) if leaders else kill_stream_leader(nodes)
        scenario = "kill-cluster-leaders" if leaders else "kill-cluster-node"
        return await run_load(scenario, dir / "relay", nodes.url, breaker, messages=messages,
                              sessions=sessions, env={"PODPOST_NATS__REPLICAS": "3"},
                              padding=padding, large_every=large_every)
    finally:
        await nodes.stop()
