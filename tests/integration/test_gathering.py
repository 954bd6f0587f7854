"""A dispatcher fed a steady trickle of mail (one every 5 ms, as a busy app sends it)
gathers it: after a fetch that caught up it waits ``gather_s`` before the next pull request,
so the mail is fetched a few at a time, not with a pull request or two per mail. Counted
on the server's side: every pull request is a publish to ``$JS.API.CONSUMER.MSG.NEXT``."""

from __future__ import annotations

import asyncio

from loadkit import upstream as upstream_mod
from runtime import bus, settings
from tests.support import dispatching as d

UP = "mail/up"
POLICY = "apps/web"
MAILS = 120
GAP_S = 0.005


async def _pull_requests(conn: bus.Conn, nats_settings: settings.NatsSettings,
                         upstream: upstream_mod.Upstream, gather_s: float) -> int:
    policy = d.policy_view(POLICY, UP)
    await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, upstream)])
    pulls: list[str] = []

    async def count(msg: object) -> None:
        pulls.append("pull")

    sub = await conn.nc.subscribe("$JS.API.CONSUMER.MSG.NEXT.>", cb=count)
    try:
        async with d.dispatcher(d.config(nats_settings, gather_s=gather_s)):
            first = d.envelope(policy, ["warm@example.org"])
            await d.queue(conn, first)
            await upstream.handler.wait_for(1)
            await asyncio.sleep(0.5)  # the consumer is idle, waiting for mail
            before = len(pulls)
            for n in range(MAILS):
                await d.queue(conn, d.envelope(policy, [f"r{n}@example.org"]))
                await asyncio.sleep(GAP_S)
            await upstream.handler.wait_for(1 + MAILS)
            await conn.nc.flush()
            return len(pulls) - before
    finally:
        await sub.unsubscribe()


async def test_a_trickle_of_mail_is_fetched_a_few_at_a_time(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    requests = await _pull_requests(conn, nats_settings, upstream, gather_s=0.05)
    assert len(upstream.handler.messages) == 1 + MAILS  # all of it, once
    assert requests <= MAILS // 3, requests
