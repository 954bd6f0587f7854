"""The health server over real sockets, and the consumer-lag sampler against a real
nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import structlog

from dispatcher import consumers, sampling
from runtime import bus, health, metrics, settings
from schemas.snapshot import PolicyView
from tests.support import dispatching, probing


@pytest.fixture
def fresh_metrics() -> metrics.Metrics:
    return metrics.reset()


@contextlib.asynccontextmanager
async def serving(draining: asyncio.Event | None = None) -> AsyncIterator[int]:
    done = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(health.serve(
        settings.HealthSettings(host="127.0.0.1", port=0), done, draining=draining,
        listening=lambda host, port: bound.set_result(port)))
    try:
        async with asyncio.timeout(5):
            yield await bound
    finally:
        done.set()
        async with asyncio.timeout(5):
            await task


async def test_routes_answer_like_probes_expect(fresh_metrics: metrics.Metrics) -> None:
    """/healthz is 200, /readyz follows the registered probes and names the first reason,
    /metrics is the text format, HEAD has no body, other paths and methods are refused."""
    fresh_metrics.accepted.labels("apps/a", "mail/relay").inc(3)
    state = {"up": False}
    async with serving() as port:
        assert await probing.get(port, "/healthz") == (200, "ok\n")
        assert await probing.get(port, "/readyz") == (503, "no role started\n")
        with health.readiness.expecting(["ingress", "dispatcher"]):
            assert await probing.get(port, "/readyz") == (503, "ingress: starting\n")
            with health.readiness.registered("ingress", lambda: None), \
                    health.readiness.registered(
                        "dispatcher", lambda: None if state["up"] else "not connected to NATS"):
                assert await probing.get(port, "/readyz") == (
                    503, "dispatcher: not connected to NATS\n")
                state["up"] = True
                assert await probing.get(port, "/readyz") == (200, "ready\n")
                assert await probing.get(port, "/readyz", method="HEAD") == (200, "")
        assert await probing.get(port, "/readyz") == (503, "no role started\n")
        scraped = await probing.scrape(port)
        assert scraped[metrics.series("podpost_ingress_accepted_total", {
            "policy": "apps/a", "upstream": "mail/relay"}.items())] == 3.0
        assert (await probing.get(port, "/nope"))[0] == 404
        assert (await probing.get(port, "/healthz", method="POST"))[0] == 405


async def test_readyz_is_503_while_draining() -> None:
    """Once the process drains, /readyz says so even though every role is still fine."""
    draining = asyncio.Event()
    async with serving(draining) as port:
        with health.readiness.registered("ingress", lambda: None):
            assert (await probing.get(port, "/readyz"))[0] == 200
            draining.set()
            assert await probing.get(port, "/readyz") == (503, "shutting down\n")
            assert (await probing.get(port, "/healthz"))[0] == 200


async def test_garbage_and_silent_clients_do_not_hurt_the_server() -> None:
    """Junk gets 400, an over-long request line is refused, a client that connects and
    says nothing is cut when the server stops, and meanwhile the server still answers."""
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\x01 junk\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
        try:
            answer = await reader.read()
        except ConnectionResetError:  # closed with our bytes unread: Linux resets
            answer = b"reset"
        assert answer.startswith(b"HTTP/1.1 400 ") or answer == b"reset"
        writer.close()
        _, silent = await asyncio.open_connection("127.0.0.1", port)
        assert (await probing.get(port, "/healthz"))[0] == 200
    silent.close()


async def test_sampler_reports_pending_and_ack_pending_per_consumer(
    conn: bus.Conn, fresh_metrics: metrics.Metrics
) -> None:
    """Three mails queued for one consumer, one of them fetched and not acked: depth 3,
    lag 2, ack pending 1, also once it is nakked with a delay (a deferred mail); a replica
    restricted to another upstream reports nothing."""
    policy = PolicyView(key="apps/a", upstream="mail/relay")
    for _ in range(3):
        await dispatching.queue(conn, dispatching.envelope(policy, ["you@example.org"]))
    pair = consumers.Pair("mail/relay", "apps/a")
    sub = await consumers.subscribe(conn, pair, settings.DispatcherSettings())
    try:
        fetched = await sub.fetch(1, timeout=5)
        assert len(fetched) == 1
        await sampling.sample(conn, [])
        scraped = metrics.samples(fresh_metrics.expose().decode())
        labels = {"upstream": "mail/relay", "policy": "apps/a"}.items()
        assert scraped[metrics.series("podpost_dispatcher_queue_depth", labels)] == 3.0
        assert scraped[metrics.series("podpost_dispatcher_consumer_pending", labels)] == 2.0
        assert scraped[metrics.series("podpost_dispatcher_consumer_ack_pending", labels)] == 1.0
        await fetched[0].nak(delay=60)  # deferred: waits for its retry, still ack pending
        await conn.nc.flush()
        await sampling.sample(conn, [])
        scraped = metrics.samples(fresh_metrics.expose().decode())
        assert scraped[metrics.series("podpost_dispatcher_consumer_ack_pending", labels)] == 1.0
        assert scraped[metrics.series("podpost_dispatcher_queue_depth", labels)] == 3.0
        await sampling.sample(conn, ["mail/other"])
        scraped = metrics.samples(fresh_metrics.expose().decode())
        assert not [key for key in scraped if key.startswith("podpost_dispatcher_queue_depth")]
    finally:
        await sub.unsubscribe()


async def test_a_port_in_use_is_an_error_that_names_it() -> None:
    """The server does not start quietly without its port: it logs and raises."""
    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(OSError):
            await health.serve(settings.HealthSettings(host="127.0.0.1", port=port),
                               asyncio.Event())
    finally:
        holder.close()
        await holder.wait_closed()
    assert [entry["event"] for entry in logs] == ["health.bind_failed"]
    assert logs[0]["port"] == port
