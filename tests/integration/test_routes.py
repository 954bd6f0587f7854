"""The ROUTES bucket on a real nats-server: the reconciler writes only what changed, a
reader's copy follows it (and reads it all again when the bucket was reset), and a real
ingress admits clients by it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiosmtplib
import msgspec

from ingress.rules import routing
from loadkit import inprocess
from loadkit.inprocess import OPEN
from reconciler import publishing
from reconciler.rules import building
from runtime import bus, policies, settings
from schemas import names, snapshot


def _route(network: str, policy: str = OPEN.key) -> snapshot.Route:
    return snapshot.Route(network=network, policy=policy, source=f"pod:apps/{network[:8]}")


def _build(routes: list[snapshot.Route] | None = None) -> building.Build:
    snap = snapshot.PolicySnapshot(generated_at=datetime(2025, 1, 1, tzinfo=UTC),
                                   policies={OPEN.key: OPEN}, routes=routes or [],
                                   source="test", routes_bucket=True)
    snap = msgspec.structs.replace(snap, digest=building.digest(snap))
    return building.Build(snapshot=snap, credentials={}, conditions={})


def _held(table: routing.Table) -> dict[str, str]:
    found = {str(ip): r.policy for ip, r in table.index.hosts.items()}
    for level in table.index.levels:
        found.update({f"{level.prefixlen}:{net}": r.policy for net, r in level.routes.items()})
    return found


async def test_a_publish_writes_only_the_changed_routes(conn: bus.Conn) -> None:
    """The first publish writes every route; the next writes only the networks named as
    changed (a put, a delete); a key someone else wrote makes the next publish compare
    the whole bucket and remove it."""
    marks = publishing.Marks()
    table = {n: _route(n) for n in ("10.0.0.1/32", "10.0.0.2/32", "fd00::1/128")}
    first = await publishing.publish(conn, _build(), marks=marks,
                                     routes=publishing.RouteChanges(table=table))
    assert (first.routes_put, first.routes_deleted, first.routes_resynced) == (3, 0, True)
    del table["10.0.0.2/32"]
    table["10.0.0.1/32"] = _route("10.0.0.1/32", "apps/other")
    second = await publishing.publish(
        conn, _build(), marks=marks,
        routes=publishing.RouteChanges(table=table, changed={"10.0.0.1/32", "10.0.0.2/32"}))
    assert (second.routes_put, second.routes_deleted, second.routes_resynced) == (1, 1, False)
    assert not second.snapshot_changed and second.routes_bytes < 200
    kv = await bus.routes_kv(conn)
    await kv.put("10.9.9.9/32", snapshot.route_encoder.encode(_route("10.9.9.9/32")))
    third = await publishing.publish(conn, _build(), marks=marks,
                                     routes=publishing.RouteChanges(table=table, changed=()))
    assert (third.routes_put, third.routes_deleted, third.routes_resynced) == (0, 1, True)
    copy = policies.RouteMirror(routing.Table())
    await copy.refresh(conn)
    assert isinstance(copy.sink, routing.Table)
    assert _held(copy.sink) == {"10.0.0.1": "apps/other", "fd00::1": OPEN.key}


async def test_a_copy_applies_only_the_changes_and_rereads_a_reset_bucket(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """A reader's copy reads the whole bucket once, then only the messages after the last
    one it applied (a changed route, a delete marker, a new CIDR); when the bucket is
    deleted and made again it notices and reads everything anew."""
    marks = publishing.Marks()
    table = {n: _route(n) for n in ("10.0.0.1/32", "10.0.0.2/32")}
    await publishing.publish(conn, _build(), marks=marks,
                             routes=publishing.RouteChanges(table=table))
    sink = routing.Table()
    copy = policies.RouteMirror(sink)
    assert not copy.loaded
    assert await copy.refresh(conn) == 2 and copy.loaded
    assert await copy.refresh(conn) == 0
    del table["10.0.0.2/32"]
    table["10.1.0.0/16"] = _route("10.1.0.0/16", "apps/net")
    await publishing.publish(conn, _build(), marks=marks, routes=publishing.RouteChanges(
        table=table, changed={"10.0.0.2/32", "10.1.0.0/16"}))
    assert await copy.refresh(conn) == 2
    assert _held(sink) == {"10.0.0.1": OPEN.key, "16:167837696": "apps/net"}
    assert routing.lookup(sink.index, routing.parse_ip("10.1.2.3")) == table["10.1.0.0/16"]

    await conn.js.delete_key_value(conn.names.routes_bucket)
    await bus.ensure(conn, names.Retention(), 1)
    fresh = {"10.0.0.7/32": _route("10.0.0.7/32")}
    await publishing.publish(conn, _build(), marks=publishing.Marks(),
                             routes=publishing.RouteChanges(table=fresh))
    await copy.refresh(conn)
    assert copy.loaded and _held(sink) == {"10.0.0.7": OPEN.key}


async def test_an_ingress_admits_by_the_routes_bucket(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """With a snapshot whose routes are in the ROUTES bucket (none in the snapshot), the
    ingress admits a client routed there, refuses one that is not, and refuses the first
    once its route is deleted."""
    marks = publishing.Marks()
    table = {"127.0.0.1/32": _route("127.0.0.1/32")}
    await publishing.publish(conn, _build(), marks=marks,
                             routes=publishing.RouteChanges(table=table))
    async with inprocess.running(inprocess.make_settings(nats_settings)) as ingress:

        async def mail_code(source: str) -> int:
            client = ingress.client(source)
            async with client:
                try:
                    return (await client.mail("app@example.com")).code
                except aiosmtplib.SMTPSenderRefused as exc:
                    return exc.code

        codes: list[int] = []
        for _ in range(100):  # the first read may still be under way: 451 until then
            codes.append(await mail_code("127.0.0.1"))
            if codes[-1] != 451:
                break
            await asyncio.sleep(0.05)
        assert codes[-1] == 250
        assert await mail_code("127.0.0.2") == 550
        await publishing.publish(conn, _build(), marks=marks, routes=publishing.RouteChanges(
            table={}, changed={"127.0.0.1/32"}))
        for _ in range(100):
            if await mail_code("127.0.0.1") == 550:
                break
            await asyncio.sleep(0.05)
        assert await mail_code("127.0.0.1") == 550
