"""The broker is the ingress's only promise: no PubAck, no 250."""

from __future__ import annotations

import asyncio

import aiosmtplib
import nats.errors
import pytest

from loadkit import inprocess
from podpost import natsserver
from runtime import bus, settings
from tests.support import ingress as support

MESSAGE = b"From: app@example.com\r\nSubject: retried\r\n\r\nbody\r\n"


async def test_broker_down_is_451_and_the_retry_after_it_is_back_is_stored_once(
    conn: bus.Conn, nats_settings: settings.NatsSettings, nats_server: natsserver.NatsServer
) -> None:
    """With nats-server stopped the client gets 451 4.3.0; once it is back (same port and
    store) the same mail sent again is queued, and the MAIL stream holds it exactly once."""
    await inprocess.put_snapshot(conn)
    cfg = inprocess.make_settings(nats_settings, publish_timeout_s=0.5)
    async with inprocess.running(cfg) as ingress:
        await nats_server.stop()
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await support.send(ingress, "app@example.com", ["z@y.test"], MESSAGE)
        assert refused.value.code == 451
        assert refused.value.message.startswith("4.3.0 ")

        await nats_server.start()
        reply = ""
        async with asyncio.timeout(20):
            while not reply:  # a real client retries later; here, until reconnected
                try:
                    reply = await support.send(ingress, "app@example.com", ["z@y.test"],
                                               MESSAGE)
                except aiosmtplib.SMTPDataError as exc:
                    assert exc.code == 451
                    await asyncio.sleep(0.2)
        assert reply.startswith("2.0.0 queued as ")
    async with asyncio.timeout(10):
        while True:  # the test's own connection reconnects on its own schedule
            try:
                entries = await support.stored(conn)
                break
            except (TimeoutError, OSError, nats.errors.Error):
                await asyncio.sleep(0.2)
    assert len(entries) == 1
    assert reply == f"2.0.0 queued as {entries[0][1].id}"
