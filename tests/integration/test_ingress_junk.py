"""Bad input gets an SMTP error and never takes the ingress down."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from loadkit import inprocess
from runtime import bus, settings
from tests.support import ingress as support

GOOD = b"From: app@example.com\r\n\r\nstill fine\r\n"


@pytest.fixture
async def ingress(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> AsyncIterator[inprocess.Ingress]:
    await inprocess.put_snapshot(conn)
    async with inprocess.running(inprocess.make_settings(nats_settings)) as running:
        yield running


async def _still_serving(ingress: inprocess.Ingress, conn: bus.Conn) -> None:
    reply = await support.send(ingress, "app@example.com", ["z@y.test"], GOOD)
    assert reply.startswith("2.0.0 queued as ")
    [(_, envelope)] = await support.stored(conn)
    assert envelope.body is not None and envelope.body.endswith(GOOD)


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"A" * 100_000, b"500 5.5.2 Command line too long\r\n"),
        (b"EHLO " + b"h" * 600, b"500 5.5.2 Command line too long\r\n"),
        (b"\x00\x00\x00", b"500 5.5.1 Command not recognized\r\n"),
        (b"\xff\xfe\x80\x81 binary junk", b"500 5.5.2 Syntax error\r\n"),
        (b"", b"500 5.5.2 Syntax error\r\n"),
        (b"MAIL FROM:<\xff\xfe@example.com>", b"553 5.1.7 Address is not valid UTF-8\r\n"),
        (b"MAIL FROM:<<<>>>", b"553 5.1.3 Error: malformed address\r\n"),
        (b"RCPT TO:<z@y.test>", b"503 Error: need MAIL command\r\n"),
        (b"DATA", b"503 Error: need RCPT command\r\n"),
    ],
)
async def test_junk_commands_get_an_error_and_the_session_goes_on(
    ingress: inprocess.Ingress, conn: bus.Conn, line: bytes, reply: bytes
) -> None:
    """Each bad command is answered with an error; the same session then still works, and
    so does the server."""
    raw = await support.Raw.connect(ingress)
    try:
        assert (await raw.command(b"EHLO client.test")).startswith(b"250-")
        assert await raw.command(line) == reply
        assert await raw.command(b"NOOP") == b"250 OK\r\n"
    finally:
        await raw.close()
    await _still_serving(ingress, conn)


async def test_nul_bytes_and_a_huge_line_inside_data(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """A DATA line over 1000 bytes is refused with 500 5.5.2 and nothing is stored; NUL
    bytes in a normal line are kept as sent."""
    raw = await support.Raw.connect(ingress)
    try:
        await raw.command(b"EHLO client.test")
        assert (await raw.command(b"MAIL FROM:<app@example.com>")).startswith(b"250 ")
        assert (await raw.command(b"RCPT TO:<z@y.test>")).startswith(b"250 ")
        assert (await raw.command(b"DATA")).startswith(b"354 ")
        raw.writer.write(b"Subject: x\r\n\r\n" + b"z" * 50_000 + b"\r\n.\r\n")
        assert (await raw.reply()).startswith(b"500 5.5.2 Line too long")
        assert (await raw.command(b"MAIL FROM:<app@example.com>")).startswith(b"250 ")
        assert (await raw.command(b"RCPT TO:<z@y.test>")).startswith(b"250 ")
        assert (await raw.command(b"DATA")).startswith(b"354 ")
        raw.writer.write(b"Subject: nul\r\n\r\na\x00b\x00\r\n.\r\n")
        assert (await raw.reply()).startswith(b"250 2.0.0 queued as ")
    finally:
        await raw.close()
    [(_, envelope)] = await support.stored(conn)
    assert envelope.body is not None and envelope.body.endswith(b"\r\n\r\na\x00b\x00\r\n")


async def test_an_abrupt_disconnect_mid_data_stores_nothing(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """A client that vanishes in the middle of DATA leaves nothing behind; others go on."""
    raw = await support.Raw.connect(ingress)
    await raw.command(b"EHLO client.test")
    await raw.command(b"MAIL FROM:<app@example.com>")
    await raw.command(b"RCPT TO:<z@y.test>")
    assert (await raw.command(b"DATA")).startswith(b"354 ")
    raw.writer.write(b"Subject: cut\r\n\r\nhalf a mess")
    await raw.writer.drain()
    raw.writer.transport.abort()
    await _still_serving(ingress, conn)


async def test_too_many_unknown_commands_end_the_session(ingress: inprocess.Ingress,
                                                         conn: bus.Conn) -> None:
    """A client sending only garbage is cut off after a few tries, and the server lives."""
    raw = await support.Raw.connect(ingress)
    try:
        replies = [await raw.command(b"XYZZY %d" % i) for i in range(5)]
        assert replies[:4] == [b"500 5.5.1 Command not recognized\r\n"] * 4
        assert replies[4].startswith(b"502 5.5.1 ")
        assert await raw.reply() == b""  # closed by the server
    finally:
        await raw.close()
    await _still_serving(ingress, conn)
