"""`dispatcher.pool` against real aiosmtpd upstreams: sessions are reused, capped per
upstream, replaced when dead, closed when idle, and never shared between logins."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from dispatcher import pool
from dispatcher.rules.outcome import Outcome
from loadkit import upstream as upstream_mod
from runtime import settings
from schemas import snapshot

MAIL = b"From: app@example.org\r\nTo: you@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def cfg(**kwargs: Any) -> settings.DispatcherSettings:
    return settings.DispatcherSettings(**{"smtp_timeout_s": 5.0, **kwargs})


def view(up: upstream_mod.Upstream, **kwargs: Any) -> snapshot.UpstreamView:
    return snapshot.UpstreamView(**{"key": "mail/upstream", "host": up.host, "port": up.port,
                                    **kwargs})


@contextlib.asynccontextmanager
async def running(
    handler: upstream_mod.Handler | None = None, **kwargs: Any
) -> AsyncIterator[upstream_mod.Upstream]:
    up = await upstream_mod.start(handler, **kwargs)
    try:
        yield up
    finally:
        await up.close()


@contextlib.asynccontextmanager
async def pooled(**kwargs: Any) -> AsyncIterator[pool.Pool]:
    async with pool.Pool(cfg(**kwargs), local_hostname="dispatcher.test") as smtp_pool:
        yield smtp_pool


async def send(
    smtp_pool: pool.Pool, upstream: snapshot.UpstreamView, rcpt: str = "you@example.org",
    creds: snapshot.Credentials | None = None,
) -> Outcome:
    return await smtp_pool.deliver(upstream, creds, "app@example.org", [rcpt], MAIL)


def delivered(outcome: Outcome) -> bool:
    return outcome.failure is None and all(r.code == 250 for r in outcome.rcpts)


async def test_sequential_deliveries_share_one_connection() -> None:
    """Five mails in a row travel over one session."""
    async with running() as up, pooled() as smtp_pool:
        for n in range(5):
            outcome = await send(smtp_pool, view(up), f"r{n}@example.org")
            assert delivered(outcome)
            assert outcome.elapsed_s > 0
        assert smtp_pool.open_connections("mail/upstream") == 1
    assert up.handler.connections == 1
    assert len(up.handler.messages) == 5


@pytest.mark.parametrize(("per_upstream", "default"), [(2, 10), (None, 3)])
async def test_concurrency_never_exceeds_the_cap(per_upstream: int | None, default: int) -> None:
    """Eight concurrent deliveries wait for slots: at most the upstream's max_connections
    (else the dispatcher's default) sessions are ever open, and all mail arrives."""
    cap = per_upstream or default
    handler = upstream_mod.Handler(slow_s=0.2)
    async with running(handler) as up, pooled(max_connections=default) as smtp_pool:
        upstream = view(up, max_connections=per_upstream)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(send(smtp_pool, upstream, f"slow@{n}.example.org"))
                     for n in range(8)]
        assert all(delivered(task.result()) for task in tasks)
        assert smtp_pool.open_connections("mail/upstream") == cap
    assert handler.max_active == cap
    assert handler.connections == cap
    assert len(handler.messages) == 8


async def test_connection_closed_by_upstream_while_idle_is_replaced() -> None:
    """A session the upstream timed out is noticed and replaced; the mail arrives once."""
    async with running() as up, pooled() as smtp_pool:
        assert delivered(await send(smtp_pool, view(up), "first@example.org"))
        assert up.drop_connections() == 1
        async with asyncio.timeout(5.0):
            await up.handler.no_sessions.wait()
        await asyncio.sleep(0.05)  # the client side reads the close
        assert delivered(await send(smtp_pool, view(up), "second@example.org"))
    assert up.handler.connections == 2
    assert [m.rcpt_to for m in up.handler.messages] == [["first@example.org"],
                                                         ["second@example.org"]]


async def test_connection_dying_before_data_is_retried_once_without_duplicates() -> None:
    """A pooled session that dies at MAIL FROM (the close crossed our command) is retried
    on a new session: the mail arrives exactly once."""
    async with running() as up, pooled() as smtp_pool:
        assert delivered(await send(smtp_pool, view(up), "first@example.org"))
        with capture_logs() as logs:
            up.drop_connections()  # no await before the next MAIL FROM goes out
            outcome = await send(smtp_pool, view(up), "second@example.org")
        assert delivered(outcome)
    assert [e["event"] for e in logs if e["event"] == "dispatcher.connection_replaced"] == [
        "dispatcher.connection_replaced"]
    assert up.handler.connections == 2
    assert [m.rcpt_to for m in up.handler.messages] == [["first@example.org"],
                                                         ["second@example.org"]]


async def test_all_pooled_sessions_dead_still_delivers_once() -> None:
    """When every pooled session died at once (an upstream restart), the mail still
    arrives, exactly once, over a new session."""
    handler = upstream_mod.Handler(slow_s=0.1)
    async with running(handler) as up, pooled() as smtp_pool:
        async with asyncio.TaskGroup() as tg:
            for n in range(2):
                tg.create_task(send(smtp_pool, view(up), f"slow@{n}.example.org"))
        assert smtp_pool.open_connections("mail/upstream") == 2
        up.drop_connections()  # no await before the next MAIL FROM goes out
        assert delivered(await send(smtp_pool, view(up), "after@example.org"))
    assert handler.connections == 3
    assert sorted(m.rcpt_to[0] for m in handler.messages) == [
        "after@example.org", "slow@0.example.org", "slow@1.example.org"]


async def test_failure_after_data_is_not_retried() -> None:
    """A session dropped during DATA is a connect failure, not retried by the pool (the
    upstream may have the mail): one connection, one attempt."""
    async with running() as up, pooled() as smtp_pool:
        assert delivered(await send(smtp_pool, view(up), "first@example.org"))
        outcome = await send(smtp_pool, view(up), "drop@example.org")
        assert outcome.failure == "connect"
        assert smtp_pool.open_connections("mail/upstream") == 0
    assert up.handler.connections == 1


async def test_idle_connections_are_closed_after_the_idle_time() -> None:
    """reap() closes sessions idle longer than idle_connection_s, and only those."""
    async with running() as up, pooled(idle_connection_s=0.3) as smtp_pool:
        assert delivered(await send(smtp_pool, view(up)))
        assert await smtp_pool.reap() == 0
        assert up.handler.active == 1
        await asyncio.sleep(0.4)
        assert await smtp_pool.reap() == 1
        async with asyncio.timeout(5.0):
            await up.handler.no_sessions.wait()
        assert smtp_pool.open_connections("mail/upstream") == 0


async def test_run_reaps_idle_connections_until_stopped() -> None:
    """run(stop) closes idle sessions on its own and returns once stop is set."""
    async with running() as up, pooled(idle_connection_s=0.2) as smtp_pool:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(smtp_pool.run(stop))
            assert delivered(await send(smtp_pool, view(up)))
            async with asyncio.timeout(5.0):
                await up.handler.no_sessions.wait()
            stop.set()
        assert smtp_pool.open_connections("mail/upstream") == 0


async def test_close_ends_every_session() -> None:
    """close() QUITs idle sessions; a session in use when it is called is closed when it
    is handed back."""
    handler = upstream_mod.Handler(slow_s=0.3)
    async with running(handler) as up:
        smtp_pool = pool.Pool(cfg(), local_hostname="dispatcher.test")
        assert delivered(await send(smtp_pool, view(up)))
        async with asyncio.TaskGroup() as tg:
            busy = tg.create_task(send(smtp_pool, view(up, key="mail/other"), "slow@x.org"))
            await asyncio.sleep(0.1)
            await smtp_pool.close()
        assert delivered(busy.result())
        async with asyncio.timeout(5.0):
            await handler.no_sessions.wait()
        assert smtp_pool.open_connections("mail/upstream") == 0
        assert smtp_pool.open_connections("mail/other") == 0


async def test_different_logins_never_share_a_connection() -> None:
    """Two logins to one upstream get their own sessions; each mail arrives under its own
    login."""
    handler = upstream_mod.AuthHandler(users={"alice": "pw-a", "bob": "pw-b"})
    alice = snapshot.Credentials(username="alice", password="pw-a")
    bob = snapshot.Credentials(username="bob", password="pw-b")
    async with running(handler, auth_require_tls=False,
                       authenticator=handler.authenticate) as up, pooled() as smtp_pool:
        for creds in (alice, bob, alice, bob):
            assert delivered(await send(smtp_pool, view(up), creds=creds))
        assert smtp_pool.open_connections("mail/upstream") == 2
    assert handler.connections == 2
    assert [m.login for m in handler.messages] == ["alice", "bob", "alice", "bob"]


async def test_at_the_cap_another_logins_idle_session_makes_room() -> None:
    """With one slot, a login needing a session closes the other login's idle one."""
    handler = upstream_mod.AuthHandler(users={"alice": "pw-a", "bob": "pw-b"})
    alice = snapshot.Credentials(username="alice", password="pw-a")
    bob = snapshot.Credentials(username="bob", password="pw-b")
    async with running(handler, auth_require_tls=False,
                       authenticator=handler.authenticate) as up, pooled() as smtp_pool:
        upstream = view(up, max_connections=1)
        for creds in (alice, bob, alice):
            assert delivered(await send(smtp_pool, upstream, creds=creds))
        assert smtp_pool.open_connections("mail/upstream") == 1
    assert handler.max_active == 1
    assert handler.connections == 3


async def test_snapshot_moving_the_upstream_reconnects() -> None:
    """When the snapshot points the upstream key at another address, the next mail goes
    there and the old session is closed."""
    async with running() as old, running() as new, pooled() as smtp_pool:
        assert delivered(await send(smtp_pool, view(old)))
        assert delivered(await send(smtp_pool, view(new)))
        async with asyncio.timeout(5.0):
            await old.handler.no_sessions.wait()
        assert smtp_pool.open_connections("mail/upstream") == 1
    assert (len(old.handler.messages), len(new.handler.messages)) == (1, 1)


async def test_failed_connect_gives_its_slot_back() -> None:
    """A refused connection is an outcome, and does not keep a slot: with one slot the
    next delivery still gets through."""
    async with running() as up, pooled() as smtp_pool:
        await up.close()
        gone = view(up, max_connections=1)
        for _ in range(2):
            outcome = await send(smtp_pool, gone)
            assert outcome.failure == "connect"
        assert smtp_pool.open_connections("mail/upstream") == 0
    async with running() as up, pooled() as smtp_pool:
        assert delivered(await send(smtp_pool, view(up, max_connections=1)))


async def test_logs_name_the_upstream_and_never_the_password() -> None:
    """connection_opened/closed carry the upstream; no log holds the password."""
    password = "planted-Pa55word-do-not-log"
    handler = upstream_mod.AuthHandler(users={"alice": password})
    creds = snapshot.Credentials(username="alice", password=password)
    with capture_logs() as logs:
        async with running(handler, auth_require_tls=False,
                           authenticator=handler.authenticate) as up, pooled() as smtp_pool:
            assert delivered(await send(smtp_pool, view(up), creds=creds))
            wrong = snapshot.Credentials(username="alice", password=password + "x")
            assert (await send(smtp_pool, view(up, key="mail/b"), creds=wrong)).code == 535
    opened = [e for e in logs if e["event"] == "dispatcher.connection_opened"]
    closed = [e for e in logs if e["event"] == "dispatcher.connection_closed"]
    assert opened == [{"event": "dispatcher.connection_opened", "log_level": "info",
                       "upstream": "mail/upstream", "host": up.host, "port": up.port,
                       "connect": "plain"}]
    assert closed == [{"event": "dispatcher.connection_closed", "log_level": "info",
                       "upstream": "mail/upstream", "reason": "shutdown",
                       "transactions": 1}]
    assert password not in repr(logs)
