"""A cluster-sized snapshot fits the bus: 15,000 pods are ~1.2 MB of JSON, over NATS's
1 MiB max payload, so the POLICY value is compressed; every reader decodes it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec

from reconciler import publishing
from reconciler.rules import building
from runtime import bus, policies
from schemas import snapshot


def _big_build(pods: int) -> building.Build:
    views = {f"ns{n}/app": snapshot.PolicyView(key=f"ns{n}/app", upstream="mail/relay")
             for n in range(100)}
    routes = [snapshot.Route(network=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}/32",
                             policy=f"ns{i % 100}/app", source=f"pod:ns{i % 100}/pod-{i}")
              for i in range(pods)]
    snap = snapshot.PolicySnapshot(
        generated_at=datetime.now(UTC), policies=views, routes=routes,
        upstreams={"mail/relay": snapshot.UpstreamView(key="mail/relay", host="relay", port=25)},
        source="test")
    snap = msgspec.structs.replace(snap, digest=building.digest(snap))
    return building.Build(snapshot=snap, credentials={}, conditions={})


async def test_a_snapshot_over_the_max_payload_is_published_and_read(conn: bus.Conn) -> None:
    build = _big_build(15_000)
    assert len(snapshot.snapshot_encoder.encode(build.snapshot)) > conn.nc.max_payload
    first = await publishing.publish(conn, build)
    again = await publishing.publish(conn, build)
    assert (first.snapshot_changed, again.snapshot_changed) == (True, False)
    assert again.revision == first.revision  # the stored one is read back to compare
    holder = policies.SnapshotHolder()
    stop = asyncio.Event()
    task = asyncio.create_task(holder.run(conn, stop, interval_s=0.05))
    try:
        async with asyncio.timeout(10):
            await holder.loaded.wait()
    finally:
        stop.set()
        await task
    assert holder.current == build.snapshot
