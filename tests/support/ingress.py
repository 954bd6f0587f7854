"""Look at what the in-process ingress (`loadkit.inprocess`) stored, and speak to it.

`send` runs one whole transaction with aiosmtplib; `stored`, `message_of` and
`watching_events` read back the MAIL stream, the BODIES store and the events without
consuming anything; `Raw` is a bare TCP client speaking SMTP by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.msg import Msg

from loadkit import inprocess
from runtime import bus
from schemas import events, mail


async def send(ingress: inprocess.Ingress, sender: str, rcpts: list[str], data: bytes,
               source: str = "127.0.0.1", **options: Any) -> str:
    """One whole transaction; the DATA reply (an SMTPResponseException on refusal)."""
    client = ingress.client(source)
    async with client:
        _, reply = await client.sendmail(sender, rcpts, data, **options)
    return reply


async def stored(conn: bus.Conn) -> list[tuple[str, mail.Envelope]]:
    """(subject, envelope) of every message in the MAIL stream, without consuming it."""
    info = await conn.js.stream_info(conn.names.mail_stream)
    out: list[tuple[str, mail.Envelope]] = []
    if not info.state.messages:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await conn.js.get_msg(conn.names.mail_stream, seq)
        except nats.js.errors.NotFoundError:
            continue
        assert msg.subject is not None and msg.data is not None
        out.append((msg.subject, mail.envelope_decoder.decode(msg.data)))
    return out


async def message_of(conn: bus.Conn, envelope: mail.Envelope) -> bytes:
    """The stored message of an envelope, inline or from the BODIES store."""
    if envelope.body is not None:
        return envelope.body
    assert envelope.body_ref is not None
    store = await bus.bodies(conn)
    result = await store.get(envelope.body_ref.name)
    assert result.data is not None
    return bytes(result.data)


@dataclass
class EventLog:
    received: list[events.AnyEvent] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_msg(self, msg: Msg) -> None:
        self.received.append(events.event_decoder.decode(msg.data))
        self.arrived.set()

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[events.AnyEvent]:
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received


@contextlib.asynccontextmanager
async def watching_events(conn: bus.Conn) -> AsyncIterator[EventLog]:
    log = EventLog()
    sub = await conn.nc.subscribe(conn.names.events_filter(), cb=log.on_msg)
    await conn.nc.flush(timeout=5)  # the server knows the subscription before anything is sent
    try:
        yield log
    finally:
        await sub.unsubscribe()


def as_dict(event: events.AnyEvent) -> dict[str, Any]:
    return msgspec.structs.asdict(event)


class Raw:
    """A bare TCP client speaking SMTP by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, ingress: inprocess.Ingress, source: str = "127.0.0.1") -> Raw:
        raw = await cls.attempt(ingress, source)
        assert isinstance(raw, Raw)
        return raw

    @classmethod
    async def attempt(cls, ingress: inprocess.Ingress, source: str = "127.0.0.1"
                      ) -> Raw | bytes:
        """Connect; the client after a 220 banner, else the bytes the server said."""
        reader, writer = await asyncio.open_connection(
            ingress.host, ingress.port, local_addr=(source, 0), limit=2**20)
        raw = cls(reader, writer)
        banner = await raw.reply()
        if banner.startswith(b"220 "):
            return raw
        await raw.close()
        return banner

    async def reply(self) -> bytes:
        """One whole reply (all its lines), or b"" at EOF."""
        lines = []
        async with asyncio.timeout(10):
            while True:
                line = await self.reader.readline()
                if not line:
                    return b"".join(lines)
                lines.append(line)
                if line[3:4] != b"-":
                    return b"".join(lines)

    async def command(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass
