"""Live updates: one NATS subscription per console process, fanned out to every open
Server-Sent Events stream.

The console subscribes (core NATS, no consumer) to the CAUGHT stream's subjects and to the
``dead``, ``replayed`` and ``purged`` events: a JetStream publish is an ordinary message
on its subject too, so the catcher's copy reaches the console the moment it is stored.
Each notice is small (kind, namespace, policy, mail id): the page then asks the API for
the rows, so what it shows is always what the stream holds. A browser that falls behind
loses notices, not correctness: its queue is bounded, and an overflow sends ``resync``.
A stream ends after `STREAM_MAX_S` (the browser's EventSource reconnects by itself) or
when the console stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import msgspec
import nats.aio.msg
import nats.errors
import structlog

from console.rules import inbox
from runtime import bus

log = structlog.get_logger("console.live")

QUEUE_SIZE = 256
KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies from cutting an idle stream."""
STREAM_MAX_S = 3600.0
RETRY_MS = 2000
"""Sent to the browser: how soon its EventSource reconnects."""
EVENT_KINDS = ("dead", "replayed", "purged")


class _Head(msgspec.Struct, frozen=True):
    id: str = ""
    policy: str = ""


class _CaughtHead(msgspec.Struct):
    envelope: _Head = _Head()


class _EventHead(msgspec.Struct):
    mail_id: str = ""
    policy: str = ""


_caught_decoder = msgspec.json.Decoder(_CaughtHead)
_event_decoder = msgspec.json.Decoder(_EventHead)


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    """``caught``, ``dead``, ``replayed``, ``purged`` or ``resync``."""
    namespace: str = ""
    policy: str = ""
    mail_id: str = ""


_encoder = msgspec.json.Encoder()


class Live:
    """The fan-out: `run` keeps the subscription, `stream` serves one browser."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._queues: set[asyncio.Queue[Notice]] = set()

    async def run(self, conn: bus.Conn) -> None:
        """Subscribe until the console stops."""
        names = conn.names
        subs = [await conn.nc.subscribe(names.caught_filter(), cb=self._on_caught)]
        for kind in EVENT_KINDS:
            subs.append(await conn.nc.subscribe(names.event_subject(kind), cb=self._on_event))
        try:
            await self._stop.wait()
        finally:
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def _on_caught(self, msg: nats.aio.msg.Msg) -> None:
        try:
            head = _caught_decoder.decode(msg.data).envelope
        except msgspec.DecodeError:
            return
        self.publish(Notice(kind="caught", namespace=inbox.namespace_of(head.policy),
                            policy=head.policy, mail_id=head.id))

    async def _on_event(self, msg: nats.aio.msg.Msg) -> None:
        try:
            head = _event_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        kind = msg.subject.rsplit(".", 1)[-1]
        self.publish(Notice(kind=kind, namespace=inbox.namespace_of(head.policy),
                            policy=head.policy, mail_id=head.mail_id))

    def publish(self, notice: Notice) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(notice)
            except asyncio.QueueFull:  # a slow browser: tell it to read everything again
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(Notice(kind="resync"))

    async def stream(self, namespace: str | None) -> AsyncIterator[bytes]:
        """The ``text/event-stream`` body of one browser's stream."""
        queue: asyncio.Queue[Notice] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        loop = asyncio.get_running_loop()
        ends = loop.time() + STREAM_MAX_S
        try:
            yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
            while not self._stop.is_set() and loop.time() < ends:
                notice = await self._next(queue, min(KEEPALIVE_S, ends - loop.time()))
                if notice is None:
                    yield b": keepalive\n\n"
                    continue
                if namespace and notice.namespace and notice.namespace != namespace:
                    continue
                yield b"event: " + notice.kind.encode() + b"\ndata: " + _encoder.encode(
                    notice) + b"\n\n"
        finally:
            self._queues.discard(queue)

    async def _next(self, queue: asyncio.Queue[Notice], timeout_s: float) -> Notice | None:
        """The next notice, or None after ``timeout_s`` or once the console stops."""
        getting = asyncio.ensure_future(queue.get())
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({getting, stopping}, timeout=max(timeout_s, 0.0),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (getting, stopping):
                task.cancel()
        if getting in done and not getting.cancelled():
            return getting.result()
        return None

    @contextlib.contextmanager
    def watching(self) -> Iterator[Watch]:
        """Notices from now on, for one waiting request: enter it *before* reading what
        is there, so a mail caught in between is not missed."""
        queue: asyncio.Queue[Notice] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield Watch(self, queue)
        finally:
            self._queues.discard(queue)


class Watch:
    def __init__(self, live: Live, queue: asyncio.Queue[Notice]) -> None:
        self._live = live
        self._queue = queue

    async def caught(self, timeout_s: float) -> bool:
        """Wait until a mail is caught (or the notices overflowed), at most ``timeout_s``."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + timeout_s
        for _ in range(QUEUE_SIZE * 4):  # each round takes a notice or ends
            remaining = ends - loop.time()
            if remaining <= 0:
                return False
            notice = await self._live._next(self._queue, remaining)
            if notice is None:
                return False
            if notice.kind in ("caught", "resync"):
                return True
        return True
