"""Questions put straight to JetStream by the resilience scenarios: is a (fresh) cluster
ready, which node leads a stream, how many body objects are left."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import nats.js.errors

from schemas import names


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

