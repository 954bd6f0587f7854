"""A started dispatcher freezes its start-up heap (``dispatcher.gc_freeze``): Python's full
collections then walk only what its deliveries made, not every module and setting."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from loadkit import upstream as upstream_mod
from runtime import bus, settings
from tests.support import dispatching as d


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("freeze", [True, False])
async def test_a_started_dispatcher_freezes_its_heap_unless_told_not_to(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream,
    unfrozen: None, freeze: bool,
) -> None:
    pol = d.policy_view("apps/web", "mail/relay")
    await d.publish_snapshot(conn, [pol], [d.upstream_view("mail/relay", upstream)])
    async with d.dispatcher(d.config(nats_settings, gc_freeze=freeze)):
        await d.queue(conn, d.envelope(pol, ["someone@example.org"]))
        await upstream.handler.wait_for(1, timeout_s=20.0)  # started, and delivering
        frozen = gc.get_freeze_count()
    assert (frozen > 0) == freeze
    assert [m.rcpt_to for m in upstream.handler.messages] == [["someone@example.org"]]
