"""Questions put straight to JetStream by the resilience scenarios: is a (fresh) cluster
ready, which node leads a stream, how many body objects are left, what residue the
ATTEMPTS bucket and the BODIES store hold once everything drained (and a sweep of it)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats
import nats.errors
import nats.js.errors

from dispatcher import recording, sweeping
from runtime import bus, scanning, settings
from schemas import events, names


async def bodies_left(nats_url: str) -> int:
    """Objects still in the BODIES store (deleted ones not counted)."""
    nc = await nats.connect(servers=nats_url.split(","), connect_timeout=2)
    try:
        store = await nc.jetstream(timeout=5).object_store(names.Bus().bodies_bucket)
        try:
            return len([info for info in await store.list(ignore_deletes=True)
                        if not info.deleted])
        except nats.js.errors.NotFoundError:
            return 0
    finally:
        await nc.close()


async def jetstream_ready(url: str, timeout_s: float = 30.0) -> None:
    """Until JetStream answers account info through ``url`` (a cluster elects its meta
    leader a moment after the servers say they are ready)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                nc = await nats.connect(servers=url.split(","), connect_timeout=2,
                                        max_reconnect_attempts=0, allow_reconnect=False)
            except (OSError, nats.errors.Error, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            try:
                await nc.jetstream(timeout=2).account_info()
                return
            except (nats.errors.Error, TimeoutError):
                await asyncio.sleep(0.2)
            finally:
                await nc.close()


async def stream_leader(url: str, stream: str, timeout_s: float = 15.0) -> str:
    """The server name leading ``stream`` in a cluster."""
    nc = await nats.connect(servers=url.split(","), connect_timeout=2)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    info = await nc.jetstream(timeout=2).stream_info(stream)
                    if info.cluster is not None and info.cluster.leader:
                        return info.cluster.leader
                except (nats.errors.Error, TimeoutError):
                    pass
                await asyncio.sleep(0.2)
    finally:
        await nc.close()



async def residue(nats_url: str) -> dict[str, int]:
    """What the ATTEMPTS bucket and the BODIES store hold: attempt records (delete markers
    not counted), object metas (delete markers counted: residue too), delete markers alone,
    and chunk sets. After a drain, live mail is none of it (no dead letters, nothing caught)."""
    bus_names = names.Bus()
    nc = await nats.connect(servers=nats_url.split(","), connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        kv_stream = names.kv_stream(bus_names.attempts_bucket)
        records = 0
        info = await js.stream_info(kv_stream, subjects_filter=">")
        for subject in info.state.subjects or {}:
            last = await js.get_last_msg(kv_stream, subject)
            if (last.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                records += 1
        bucket = bus_names.bodies_bucket
        obj_stream = names.obj_stream(bucket)
        metas = (await js.stream_info(obj_stream, subjects_filter=f"$O.{bucket}.M.>")
                 ).state.subjects or {}
        markers = 0
        for subject in metas:
            last = await js.get_last_msg(obj_stream, subject)
            markers += b'"deleted":true' in (last.data or b"")
        chunks = (await js.stream_info(obj_stream, subjects_filter=f"$O.{bucket}.C.>")
                  ).state.subjects or {}
        return {"records": records, "objects": len(metas), "markers": markers,
                "chunk_sets": len(chunks)}
    finally:
        await nc.close()


def clean(counts: dict[str, int]) -> bool:
    return not any(counts.values())


async def until_clean(nats_url: str, timeout_s: float = 10.0) -> dict[str, int]:
    """`residue`, polled until it is none or ``timeout_s`` passed (cleanups run just after
    an ack, failed ones are retried every couple of seconds); the last counts."""
    counts = await residue(nats_url)
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + timeout_s
    while not clean(counts) and loop.time() < stop_at:
        await asyncio.sleep(0.2)
        counts = await residue(nats_url)
    return counts


async def sweep(nats_url: str) -> sweeping.Swept:
    """One sweep without a grace: only for a drained relay, where nothing is in flight."""
    cfg = settings.NatsSettings(url=nats_url)
    async with bus.connect(cfg, "dispatcher", attempts=3, ensure_bus=False) as conn:
        stores = await recording.open_stores(conn)
        return await sweeping.sweep(stores, now=datetime.now(UTC), grace_s=0.0)


async def delivered_events(nats_url: str) -> dict[str, list[bool]]:
    """Every stored ``delivered`` event by mail id: its ``redelivered`` marks, in order
    (what ``podpost trace`` shows of deliveries)."""
    cfg = settings.NatsSettings(url=nats_url)
    out: dict[str, list[bool]] = {}
    async with bus.connect(cfg, "admin", attempts=3, ensure_bus=False) as conn:
        for stored in await scanning.scan(conn, conn.names.events_stream,
                                          conn.names.event_subject("delivered")):
            event = events.event_decoder.decode(stored.data)
            if isinstance(event, events.Delivered):
                out.setdefault(event.mail_id, []).append(event.redelivered)
    return out
