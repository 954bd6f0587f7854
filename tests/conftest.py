"""Shared fixtures: a real nats-server per test, a connection to it, real SMTP upstreams,
and a guard that fails a test which leaves asyncio tasks behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import hypothesis
import pytest

from loadkit import upstream as upstream_mod
from podpost import natsserver
from runtime import bus, settings

# No per-example deadline: a deadline is a timed assertion, and on a busy 2-core machine
# hypothesis's 200 ms failed a CRD property test that is about correctness, not speed.
hypothesis.settings.register_profile("podpost", deadline=None)
hypothesis.settings.load_profile("podpost")


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[natsserver.NatsServer]:
    """A real nats-server with JetStream on a free loopback port and its own store."""
    async with natsserver.running(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def nats_settings(nats_server: natsserver.NatsServer) -> settings.NatsSettings:
    return settings.NatsSettings(url=nats_server.url, prefix="podpost")


@pytest.fixture
async def conn(nats_settings: settings.NatsSettings) -> AsyncIterator[bus.Conn]:
    """A connection to the test server with the bus ensured."""
    async with bus.connect(nats_settings, "test", attempts=3) as connection:
        yield connection


@pytest.fixture
async def upstream() -> AsyncIterator[upstream_mod.Upstream]:
    """A plain aiosmtpd upstream; the recipient selects its behaviour."""
    server = await upstream_mod.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def no_pending_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running behind it (kopf's guard)."""
    before = asyncio.all_tasks()
    yield
    # give cancelled tasks one turn to finish
    for _ in range(3):
        await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    left.discard(asyncio.current_task())  # type: ignore[arg-type]
    if left:
        names = sorted(t.get_coro().__qualname__ for t in left)  # type: ignore[union-attr]
        pytest.fail(f"test left asyncio tasks behind: {names}")
