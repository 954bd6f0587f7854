"""Sessions are counted, capped, timed out when idle, and drained on stop."""

from __future__ import annotations

import asyncio
import time

from loadkit import inprocess
from runtime import bus, settings
from tests.support import ingress as support


async def test_sessions_beyond_the_cap_get_421_and_a_freed_slot_is_reused(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """With max_sessions=2 a third connection is told 421 4.3.2 and closed; once one of
    the two leaves, a new client is served."""
    await inprocess.put_snapshot(conn)
    async with inprocess.running(inprocess.make_settings(nats_settings, max_sessions=2)) as ing:
        first = await support.Raw.connect(ing)
        second = await support.Raw.connect(ing)
        assert await support.Raw.attempt(ing) == (
            b"421 4.3.2 Too many sessions, try again later\r\n")
        assert await first.command(b"QUIT") == b"221 Bye\r\n"
        await first.close()
        await second.close()
        async with asyncio.timeout(5):
            while True:  # the server notices the closes on its next loop turns
                third = await support.Raw.attempt(ing)
                if isinstance(third, support.Raw):
                    break
                await asyncio.sleep(0.05)
        assert (await third.command(b"NOOP")) == b"250 OK\r\n"
        await third.close()


async def test_an_idle_client_is_disconnected(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """A session silent for idle_timeout_s is closed by the server."""
    cfg = inprocess.make_settings(nats_settings, idle_timeout_s=0.3)
    async with inprocess.running(cfg) as ing:
        raw = await support.Raw.connect(ing)
        started = time.monotonic()
        assert await raw.reply() == b""
        assert 0.2 < time.monotonic() - started < 5
        await raw.close()


async def test_stop_closes_idle_sessions_and_lets_a_transaction_finish(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """On stop an idle session gets 421 at once; one inside a transaction may finish it
    (250, then 421); new connections are refused and serve returns."""
    await inprocess.put_snapshot(conn)
    async with inprocess.running(inprocess.make_settings(nats_settings, grace_s=5.0)) as ing:
        idle = await support.Raw.connect(ing)
        await idle.command(b"EHLO client.test")
        busy = await support.Raw.connect(ing)
        await busy.command(b"EHLO client.test")
        await busy.command(b"MAIL FROM:<app@example.com>")
        await busy.command(b"RCPT TO:<z@y.test>")
        assert (await busy.command(b"DATA")).startswith(b"354 ")
        busy.writer.write(b"From: app@example.com\r\n\r\nfirst half\r\n")
        await busy.writer.drain()

        ing.stop.set()
        assert await idle.reply() == b"421 4.3.2 Service shutting down, try again later\r\n"
        assert await idle.reply() == b""
        assert not ing.task.done()
        busy.writer.write(b"second half\r\n.\r\n")
        assert (await busy.reply()).startswith(b"250 2.0.0 queued as ")
        assert await busy.reply() == b"421 4.3.2 Service shutting down, try again later\r\n"
        async with asyncio.timeout(3):
            await ing.task
        await idle.close()
        await busy.close()
    [(_, envelope)] = await support.stored(conn)
    assert envelope.body is not None and envelope.body.endswith(b"first half\r\nsecond half\r\n")


async def test_stop_cuts_a_transaction_that_outlives_the_grace_period(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """A client still in DATA when grace_s runs out is closed and serve returns."""
    await inprocess.put_snapshot(conn)
    async with inprocess.running(inprocess.make_settings(nats_settings, grace_s=0.3)) as ing:
        slow = await support.Raw.connect(ing)
        await slow.command(b"EHLO client.test")
        await slow.command(b"MAIL FROM:<app@example.com>")
        await slow.command(b"RCPT TO:<z@y.test>")
        await slow.command(b"DATA")
        started = time.monotonic()
        ing.stop.set()
        async with asyncio.timeout(5):
            await ing.task
        assert time.monotonic() - started < 3
        assert await slow.reply() == b"421 4.3.2 Service shutting down, try again later\r\n"
        await slow.close()
    assert await support.stored(conn) == []


async def test_a_new_session_does_not_shrink_another_sessions_mail_limit(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """EHLO grants MAIL room for SIZE= and SMTPUTF8 (RFC 1870, 6531); another client
    connecting meanwhile must not take that room away (aiosmtpd shares it by default)."""
    await inprocess.put_snapshot(conn)
    async with inprocess.running(inprocess.make_settings(nats_settings)) as ing:
        first = await support.Raw.connect(ing)
        await first.command(b"EHLO client.test")
        second = await support.Raw.connect(ing)
        address = b"a" * 470 + b"@example.com"
        line = b"MAIL FROM:<" + address + b"> SIZE=1000 SMTPUTF8"
        assert 512 < len(line) <= 512 + 26 + 10
        assert (await first.command(line)).startswith(b"250 ")
        await first.close()
        await second.close()
