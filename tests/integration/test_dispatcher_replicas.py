"""Dispatcher replicas: several share one durable consumer without duplicates, and a
replica restricted to some upstreams leaves the others' mail alone."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.js.errors
import pytest

from loadkit import upstream as upstream_mod
from runtime import bus, settings
from tests.support import dispatching as d


class _Peers(upstream_mod.Handler):
    """Remembers which client connection carried each message, and takes a little
    while per message so that two replicas both get some."""

    peers: list[Any]

    def __init__(self) -> None:
        super().__init__()
        self.peers = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.02)
        reply = await super().handle_DATA(server, session, envelope)
        self.peers.append(session.peer)
        return reply


async def test_two_dispatchers_share_the_work_without_duplicates(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Two dispatcher processes on one stream each deliver part of the queue over their
    own connection (the per-replica default cap of 1: the server sets no cap of its own,
    which would hold for both together), and every mail arrives exactly once."""
    handler = _Peers()
    up = await upstream_mod.start(handler)
    try:
        policy = d.policy_view("apps/web", "mail/up")
        await d.publish_snapshot(conn, [policy], [d.upstream_view("mail/up", up)])
        envs = [d.envelope(policy, [f"user{i}@example.org"]) for i in range(30)]
        for env in envs:
            await d.queue(conn, env)
        cfg = d.config(nats_settings, batch=5, max_connections=1)
        async with d.dispatcher(cfg), d.dispatcher(cfg):
            await handler.wait_for(len(envs))
            await d.eventually(lambda: d.drained(conn))
            await asyncio.sleep(0.3)  # a duplicate would show up now
    finally:
        await up.close()
    rcpts = [m.rcpt_to[0] for m in handler.messages]
    assert sorted(rcpts) == sorted(env.rcpt_to[0] for env in envs)
    assert len(set(handler.peers)) == 2  # one pooled connection per replica, both used


async def test_a_restricted_dispatcher_leaves_other_upstreams_mail_alone(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """A dispatcher started for ``mail/a`` delivers a's mail, never touches b's (no
    consumer, the mail stays queued), until a dispatcher for b runs."""
    up_a = await upstream_mod.start()
    up_b = await upstream_mod.start()
    try:
        pol_a = d.policy_view("apps/a", "mail/a")
        pol_b = d.policy_view("apps/b", "mail/b")
        await d.publish_snapshot(conn, [pol_a, pol_b], [
            d.upstream_view("mail/a", up_a), d.upstream_view("mail/b", up_b)])
        await d.queue(conn, d.envelope(pol_a, ["you@example.org"]))
        await d.queue(conn, d.envelope(pol_b, ["you@example.org"]))
        async with d.dispatcher(d.config(nats_settings, upstreams=["mail/a"])):
            await up_a.handler.wait_for(1)
            await d.eventually(lambda: _queued_is(conn, 1))
            await asyncio.sleep(0.5)  # a few discovery rounds
            assert up_b.handler.messages == []
            with pytest.raises(nats.js.errors.NotFoundError):
                await conn.js.consumer_info(
                    conn.names.mail_stream, conn.names.consumer_name("mail/b", "apps/b"))
        async with d.dispatcher(d.config(nats_settings, upstreams=["mail/b"])):
            await up_b.handler.wait_for(1)
            await d.eventually(lambda: d.drained(conn))
        assert len(up_a.handler.messages) == 1
    finally:
        await up_a.close()
        await up_b.close()


async def _queued_is(conn: bus.Conn, count: int) -> bool:
    return await d.queued(conn) == count
