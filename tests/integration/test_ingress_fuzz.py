"""10,000 generated SMTP sessions against one in-process ingress: no crash, no stuck
session task, memory bounded, and nothing queued for a client no policy admits.

The sessions come from `loadkit.smtpfuzz` (hypothesis, derandomized: 2,500 scripts,
each replayed in four client modes), 200 at a time over raw asyncio streams.
`test_ingress_junk.py` checks single replies; this checks that nothing a client does in
any order takes the server down.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import pytest
import structlog

from loadkit import inprocess, relay, smtpfuzz
from runtime import bus
from runtime import settings as settings_mod
from tests.support import ingress as support

SCRIPTS = 2_500
SESSIONS = SCRIPTS * len(smtpfuzz.MODES)
CONCURRENCY = 200
IDLE_TIMEOUT_S = 1.0
WARMUP = 1000


@pytest.fixture
async def ingress(
    conn: bus.Conn, nats_settings: settings_mod.NatsSettings
) -> AsyncIterator[inprocess.Ingress]:
    await inprocess.put_snapshot(conn)
    cfg = inprocess.make_settings(nats_settings, idle_timeout_s=IDLE_TIMEOUT_S,
                                  max_sessions=CONCURRENCY * 2,
                                  max_recipients=smtpfuzz.MAX_RECIPIENTS)
    async with inprocess.running(cfg) as running:
        yield running


async def test_ten_thousand_generated_sessions_never_take_the_ingress_down(
    ingress: inprocess.Ingress, conn: bus.Conn, record_property: Callable[[str, object], None]
) -> None:
    """Replaying 10,000 generated sessions, 200 at a time: every session ends (none is
    stuck), the server only ever sends whole reply lines, no session fails with an
    unhandled error, no session task is left once the clients are gone, RSS after the
    run is within 64 MiB of RSS after the first 1,000 sessions, every "queued" reply names
    a stored mail, nothing is queued for the client no policy admits, and a normal mail
    is still accepted at the end."""
    scripts = smtpfuzz.generate(SCRIPTS)
    assert len(scripts) == SESSIONS
    tally = smtpfuzz.Tally(idle_timeout_s=IDLE_TIMEOUT_S)
    rss: dict[str, float] = {"start": relay.rss_mib()}

    with structlog.testing.capture_logs() as logs:
        await smtpfuzz.run(ingress.port, scripts[:WARMUP], tally, CONCURRENCY)
        rss["after_1000"] = relay.rss_mib()
        await smtpfuzz.run(ingress.port, scripts[WARMUP:], tally, CONCURRENCY)
        rss["end"] = relay.rss_mib()
        for _ in range(200):  # closed connections end their tasks on the next turns (10 s)
            if not smtpfuzz.session_tasks():
                break
            await asyncio.sleep(0.05)
        assert smtpfuzz.session_tasks() == []
        assert not ingress.task.done()
        reply = await support.send(ingress, "app@example.com", ["z@y.test"],
                                   b"From: app@example.com\r\n\r\nafter the storm\r\n")
        assert reply.startswith("2.0.0 queued as ")

    failures = [e for e in logs if e["event"] in ("ingress.session_failed",
                                                   "ingress.command_failed")]
    stored = {envelope.id for _, envelope in await support.stored(conn)}
    queued = set().union(*tally.queued.values())
    figures = {
        **smtpfuzz.summary(tally), "unhandled_errors": len(failures),
        "rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "peak_rss_mib": round(relay.peak_rss_mib(os.getpid()), 1),
    }
    print("fuzz", figures)
    for key, value in figures.items():
        record_property(key, value)

    assert tally.sessions == SESSIONS
    assert tally.huge_lines == tally.huge_budget
    assert tally.stuck == []
    assert tally.malformed == []
    assert failures == []
    assert len(tally.queued["127.0.0.1"]) > 0 and len(tally.queued["127.0.0.2"]) > 0
    assert "127.0.0.9" not in tally.queued
    assert queued <= stored
    assert rss["end"] - rss["after_1000"] < 64


async def test_a_helo_name_that_is_not_utf8_does_not_fail_the_sessions_mail(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """Found by the generator: aiosmtpd keeps a non-UTF-8 HELO name as surrogates, which
    the envelope's JSON cannot hold, so every mail of such a session got 451. The name is
    now stored with U+FFFD in place of the bad bytes and the mail is queued."""
    raw = await support.Raw.connect(ingress)
    try:
        assert (await raw.command(b"HELO \xde\xd5bad.test")).startswith(b"250 ")
        assert (await raw.command(b"MAIL FROM:<app@example.com>")).startswith(b"250 ")
        assert (await raw.command(b"RCPT TO:<z@y.test>")).startswith(b"250 ")
        assert (await raw.command(b"DATA")).startswith(b"354 ")
        reply = await raw.command(b"From: app@example.com\r\n\r\nhi\r\n.")
        assert reply.startswith(b"250 2.0.0 queued as ")
    finally:
        await raw.close()
    [(_, envelope)] = await support.stored(conn)
    assert envelope.helo == "\ufffd\ufffdbad.test"


@pytest.mark.parametrize("line", [b"MAIL FROM:<", b"MAIL FROM:<@", b"RCPT TO:<"])
async def test_a_lone_angle_bracket_is_a_malformed_address_not_an_internal_error(
    ingress: inprocess.Ingress, line: bytes
) -> None:
    """Found by the generator at 40,000 sessions: the stdlib's address parser raises
    IndexError on ``<`` alone, which became 451 and an error log with a traceback."""
    raw = await support.Raw.connect(ingress)
    try:
        await raw.command(b"EHLO client.test")
        if line.startswith(b"RCPT"):
            await raw.command(b"MAIL FROM:<app@example.com>")
        with structlog.testing.capture_logs() as logs:
            assert await raw.command(line) == b"553 5.1.3 Error: malformed address\r\n"
        assert await raw.command(b"NOOP") == b"250 OK\r\n"
    finally:
        await raw.close()
    assert [e for e in logs if e["log_level"] == "error"] == []
