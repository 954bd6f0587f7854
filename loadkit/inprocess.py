"""The real ingress run in the caller's loop, with a known policy snapshot: for the ingress
tests and the fuzz run of ``bench/resilience.py``.

`running` starts ``ingress.main.serve`` on a free loopback port with a stop Event and
stops it on exit (bounded); `put_snapshot` puts `SNAPSHOT` (three policies: open, strict
about senders, and one for a static network) into the POLICY bucket; `make_settings` is the
ingress's settings for it. What the tests read back (the MAIL stream, bodies, events) and
their hand-speaking clients stay in ``tests/support/ingress.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiosmtplib

from ingress import main as ingress_main
from runtime import bus, settings
from schemas.snapshot import PolicySnapshot, PolicyView, Route, snapshot_encoder

HOSTNAME = "mx.podpost.test"

OPEN = PolicyView(key="apps/open", upstream="mail/relay")
STRICT = PolicyView(key="apps/strict", upstream="mail/relay",
                    allowed_senders=["app@example.com", "@example.org"], max_message_size=4096)
NET = PolicyView(key="apps/net", upstream="mail/other.relay")

SNAPSHOT = PolicySnapshot(
    generated_at=datetime(2025, 1, 1, tzinfo=UTC),
    policies={p.key: p for p in (OPEN, STRICT, NET)},
    routes=[
        Route(network="127.0.0.1/32", policy=OPEN.key, source="pod:apps/app-1"),
        Route(network="127.0.0.2/32", policy=STRICT.key, source="pod:apps/strict-1"),
        Route(network="127.0.3.0/24", policy=NET.key, source="static:apps/lab"),
    ],
    source="test",
)


def make_settings(nats: settings.NatsSettings, grace_s: float = 2.0, **ingress: Any
                  ) -> settings.Settings:
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "hostname": HOSTNAME,
                               "publish_timeout_s": 1.0}
    options.update(ingress)
    return settings.Settings(nats=nats, ingress=settings.IngressSettings(**options),
                             grace_s=grace_s)


async def put_snapshot(conn: bus.Conn, snap: PolicySnapshot = SNAPSHOT) -> None:
    kv = await bus.policy_kv(conn)
    await kv.put(conn.names.snapshot_key, snapshot_encoder.encode(snap))


@dataclass
class Ingress:
    host: str
    port: int
    stop: asyncio.Event
    task: asyncio.Task[None]

    def client(self, source: str = "127.0.0.1", **kwargs: Any) -> aiosmtplib.SMTP:
        options: dict[str, Any] = {"hostname": self.host, "port": self.port,
                                   "source_address": (source, 0), "local_hostname": "client.test",
                                   "start_tls": False, "timeout": 10}
        options.update(kwargs)
        return aiosmtplib.SMTP(**options)

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        self.stop.set()
        async with asyncio.timeout(timeout_s):
            await self.task


@contextlib.asynccontextmanager
async def running(cfg: settings.Settings) -> AsyncIterator[Ingress]:
    stop = asyncio.Event()
    bound: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    def listening(host: str, port: int) -> None:
        bound.set_result((host, port))

    task = asyncio.create_task(ingress_main.serve(cfg, stop, listening=listening))
    first: set[asyncio.Future[Any]] = {task, bound}
    try:
        async with asyncio.timeout(15):
            done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what made serve fail
            raise AssertionError("ingress returned before listening")
        host, port = bound.result()
        ingress = Ingress(host=host, port=port, stop=stop, task=task)
        yield ingress
    finally:
        stop.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cfg.grace_s + 5):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
