"""Run the real ingress in the test's loop and look at what it stored.

`running` starts ``ingress.main.serve`` on a free loopback port with a stop Event and
stops it on exit (bounded); the helpers put a policy snapshot into the POLICY bucket and
read back the MAIL stream, the BODIES store and the events without consuming anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiosmtplib
import msgspec
import nats.js.errors
from nats.aio.msg import Msg

from ingress import main as ingress_main
from runtime import bus, settings
from schemas import events, mail
from schemas.snapshot import PolicySnapshot, PolicyView, Route, snapshot_encoder

HOSTNAME = "mx.podpost.test"

OPEN = PolicyView(key="apps/open", upstream="mail/relay")
STRICT = PolicyView(key="apps/strict", upstream="mail/relay",
                    allowed_senders=["app@example.com", "@example.org"], max_message_size=4096)
NET = PolicyView(key="apps/net", upstream="mail/other.relay")

SNAPSHOT = PolicySnapshot(
    generated_at=datetime(2025, 1, 1, tzinfo=UTC),
    policies={p.key: p for p in (OPEN, STRICT, NET)},
    routes=[
        Route(network="127.0.0.1/32", policy=OPEN.key, source="pod:apps/app-1"),
        Route(network="127.0.0.2/32", policy=STRICT.key, source="pod:apps/strict-1"),
        Route(network="127.0.3.0/24", policy=NET.key, source="static:apps/lab"),
    ],
    source="test",
)


def make_settings(nats: settings.NatsSettings, grace_s: float = 2.0, **ingress: Any
                  ) -> settings.Settings:
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "hostname": HOSTNAME,
                               "publish_timeout_s": 1.0}
    options.update(ingress)
    return settings.Settings(nats=nats, ingress=settings.IngressSettings(**options),
                             grace_s=grace_s)


async def put_snapshot(conn: bus.Conn, snap: PolicySnapshot = SNAPSHOT) -> None:
    kv = await bus.policy_kv(conn)
    await kv.put(conn.names.snapshot_key, snapshot_encoder.encode(snap))


@dataclass
class Ingress:
    host: str
    port: int
    stop: asyncio.Event
    task: asyncio.Task[None]

    def client(self, source: str = "127.0.0.1", **kwargs: Any) -> aiosmtplib.SMTP:
        options: dict[str, Any] = {"hostname": self.host, "port": self.port,
                                   "source_address": (source, 0), "local_hostname": "client.test",
                                   "start_tls": False, "timeout": 10}
        options.update(kwargs)
        return aiosmtplib.SMTP(**options)

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        self.stop.set()
        async with asyncio.timeout(timeout_s):
            await self.task


@contextlib.asynccontextmanager
async def running(cfg: settings.Settings) -> AsyncIterator[Ingress]:
    stop = asyncio.Event()
    bound: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    def listening(host: str, port: int) -> None:
        bound.set_result((host, port))

    task = asyncio.create_task(ingress_main.serve(cfg, stop, listening=listening))
    try:
        async with asyncio.timeout(15):
            done, _ = await asyncio.wait({task, bound}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what made serve fail
            raise AssertionError("ingress returned before listening")
        host, port = bound.result()
        ingress = Ingress(host=host, port=port, stop=stop, task=task)
        yield ingress
    finally:
        stop.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cfg.grace_s + 5):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def send(ingress: Ingress, sender: str, rcpts: list[str], data: bytes,
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
    async def connect(cls, ingress: Ingress, source: str = "127.0.0.1") -> Raw:
        raw = await cls.attempt(ingress, source)
        assert isinstance(raw, Raw)
        return raw

    @classmethod
    async def attempt(cls, ingress: Ingress, source: str = "127.0.0.1") -> Raw | bytes:
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
