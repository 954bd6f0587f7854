"""1,000 idle connections: the ingress keeps serving others, and times every one of them
out. `test_ingress_sessions.py` covers one idle client; this is the same at scale."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from loadkit import inprocess, relay, smtpfuzz
from runtime import bus, settings
from tests.support import ingress as support

IDLE = 1000
IDLE_TIMEOUT_S = 6.0
"""Long enough to open all of them and send a mail before the first one times out."""


def _session_tasks() -> int:
    return len(smtpfuzz.session_tasks())


async def _idle_client(ingress: inprocess.Ingress) -> support.Raw:
    raw = await support.Raw.attempt(ingress)
    assert isinstance(raw, support.Raw), raw
    return raw


async def test_a_thousand_idle_connections_neither_block_the_ingress_nor_stay(
    conn: bus.Conn, nats_settings: settings.NatsSettings,
    record_property: Callable[[str, object], None],
) -> None:
    """With 1,000 clients connected and silent, a new client's mail is queued and a NOOP on
    one of the idle sessions is answered; then the idle timeout closes every one of them
    (the server sends EOF) and no session task is left."""
    await inprocess.put_snapshot(conn)
    cfg = inprocess.make_settings(nats_settings, idle_timeout_s=IDLE_TIMEOUT_S,
                                  max_sessions=IDLE + 100)
    async with inprocess.running(cfg) as ing:
        rss_before = relay.rss_mib()
        started = time.monotonic()
        gate = asyncio.Semaphore(100)

        async def connect() -> support.Raw:
            async with gate:
                return await _idle_client(ing)

        idle = await asyncio.gather(*(connect() for _ in range(IDLE)))
        opened_s = time.monotonic() - started
        rss_open = relay.rss_mib()
        assert _session_tasks() == IDLE

        began = time.monotonic()
        reply = await support.send(ing, "app@example.com", ["z@y.test"],
                                   b"From: app@example.com\r\n\r\namong the idle\r\n")
        mail_s = time.monotonic() - began
        assert reply.startswith("2.0.0 queued as ")
        assert await idle[0].command(b"NOOP") == b"250 OK\r\n"
        still_open = sum(1 for raw in idle if not raw.reader.at_eof())

        async def closed_by_server(raw: support.Raw) -> bytes:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT_S + 20):
                    return await raw.reader.read()
            finally:
                await raw.close()

        leftovers = await asyncio.gather(*(closed_by_server(raw) for raw in idle))
        closed_s = time.monotonic() - started
        for _ in range(100):  # their tasks end on the next loop turns (at most 5 s)
            if _session_tasks() == 0:
                break
            await asyncio.sleep(0.05)
        figures = {"idle": IDLE, "opened_s": round(opened_s, 2),
                   "mail_among_idle_s": round(mail_s, 3), "still_open_at_mail": still_open,
                   "all_closed_after_s": round(closed_s, 1),
                   "rss_mib_before": round(rss_before, 1), "rss_mib_open": round(rss_open, 1),
                   "kib_per_idle_connection": round((rss_open - rss_before) * 1024 / IDLE, 1)}
        print("idle", figures)
        for key, value in figures.items():
            record_property(key, value)
        assert still_open == IDLE
        assert leftovers == [b""] * IDLE  # closed without a word, by the timeout
        assert _session_tasks() == 0
        assert not ing.task.done()


async def test_a_slow_but_steady_data_transfer_outlasts_the_idle_timeout(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Found here: the idle timeout restarted only per command, so a DATA transfer longer
    than idle_timeout_s was cut while its lines kept coming. A line every 0.3 s for 2.4 s
    with a 1 s timeout is now queued; a client silent mid-DATA is still cut."""
    await inprocess.put_snapshot(conn)
    async with inprocess.running(inprocess.make_settings(nats_settings, idle_timeout_s=1.0)) as ing:
        steady = await support.Raw.connect(ing)
        silent = await support.Raw.connect(ing)
        try:
            for raw in (steady, silent):
                await raw.command(b"EHLO client.test")
                await raw.command(b"MAIL FROM:<app@example.com>")
                await raw.command(b"RCPT TO:<z@y.test>")
                assert (await raw.command(b"DATA")).startswith(b"354 ")
            steady.writer.write(b"From: app@example.com\r\n\r\n")
            for i in range(8):
                await asyncio.sleep(0.3)
                steady.writer.write(b"line %d\r\n" % i)
            assert (await steady.command(b".")).startswith(b"250 2.0.0 queued as ")
            assert await silent.reply() == b""  # closed by the server meanwhile
        finally:
            await steady.close()
            await silent.close()


async def test_commands_keep_a_session_open_and_the_silence_after_them_ends_it(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """The idle timeout counts from the last input, not from when its timer was armed: a
    NOOP every 0.3 s for 2.4 s with a 1 s timeout is answered every time; then the server
    closes the session after about a second of silence, not before half of it."""
    await inprocess.put_snapshot(conn)
    async with inprocess.running(inprocess.make_settings(nats_settings, idle_timeout_s=1.0)) as ing:
        raw = await support.Raw.connect(ing)
        try:
            for _ in range(8):
                await asyncio.sleep(0.3)
                assert await raw.command(b"NOOP") == b"250 OK\r\n"
            last = time.monotonic()
            assert await raw.reply() == b""  # the server closed it
            assert time.monotonic() - last >= 0.5
        finally:
            await raw.close()
