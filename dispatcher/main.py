"""The dispatcher role: wiring only.

One connection, and in one TaskGroup: the policy snapshot poller, the CONTROL bucket's
watcher (`control`: suspended upstreams, held mails), the SMTP pool's idle reaper, the
cleanup backlog and the sweep of residue (`sweeping`), the consumer discovery that runs a
`worker` per (upstream, policy) consumer and, when metrics are served, the consumer-lag
`sampling`. Ready (``/readyz``) with a live connection, a snapshot and the control state.
On ``stop`` the workers stop fetching, finish what they hold within ``grace_s`` and
cancel the rest; unacked messages are redelivered later, so nothing depends on this.
"""

from __future__ import annotations

import asyncio
import functools

import structlog

from dispatcher import (
    consumers,
    control,
    delivery,
    keyring,
    leasing,
    pool,
    quotakv,
    ratekv,
    recording,
    sampling,
    sweeping,
    worker,
)
from dispatcher.rules import limiting
from runtime import bus, health, heap, policies
from runtime import settings as settings_mod

log = structlog.get_logger("dispatcher.main")


async def serve(
    cfg: settings_mod.Settings, stop: asyncio.Event, *,
    limiter: limiting.Limiter | None = None,
) -> None:
    """Deliver queued mail until ``stop`` is set; ``limiter`` is the rate-limit seam
    (by default the global one over the RATES bucket, `ratekv.KvLimiter`)."""
    async with bus.connect(cfg.nats, "dispatcher") as conn:
        holder = policies.SnapshotHolder(role="dispatcher")
        steering = control.Control(cfg.dispatcher.hold_delay_s)
        stores = await recording.open_stores(conn)
        leases = leasing.Leases(await bus.rates_kv(conn), kv_s=conn.deadlines.kv_s)
        async with pool.Pool(cfg.dispatcher, leases=leases) as smtp_pool:
            shared = worker.Shared(
                trip=delivery.Context(
                    cfg=cfg, holder=holder, pool=smtp_pool,
                    stores=stores,
                    keyring=keyring.Keyring(await bus.credentials_kv(conn),
                                            deadlines=conn.deadlines),
                    control=steering,
                    quotas=quotakv.QuotaCounter(
                        await bus.rates_kv(conn), scale=cfg.dispatcher.rate_window_scale,
                        deadlines=conn.deadlines),
                ),
                limiter=limiter or ratekv.KvLimiter(
                    await bus.rates_kv(conn), scale=cfg.dispatcher.rate_window_scale,
                    deadlines=conn.deadlines),
            )
            heap.settle(freeze=cfg.dispatcher.gc_freeze)
            log.info("dispatcher.started", upstreams=cfg.dispatcher.upstreams or "all")
            ready = health.readiness.registered(
                "dispatcher", health.connected(conn.nc), health.loaded(holder), steering.probe)
            with ready:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(holder.run(conn, stop))
                    tg.create_task(steering.run(conn, stop))
                    tg.create_task(smtp_pool.run(stop))
                    tg.create_task(sweeping.run(stores, cfg.dispatcher, stop))
                    tg.create_task(leases.run(stop))
                    tg.create_task(consumers.run(
                        conn, cfg, holder, functools.partial(worker.run, shared), stop))
                    if cfg.health.port:
                        tg.create_task(sampling.run(conn, cfg, stop))
    log.info("dispatcher.stopped")
