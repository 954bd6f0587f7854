"""Helpers for dispatcher tests: a snapshot and envelopes published straight to the bus,
a dispatcher `serve` running in the test's loop, and readers for what it produced."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg

from dispatcher import main as dispatcher_main
from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import events, mail, snapshot

FAST = snapshot.RetryOverride(min_delay_s=0.2, max_delay_s=0.5, max_age_s=3.0)
"""Retries within a second and giving up after three, so tests stay short."""
BODY = (b"From: app@example.org\r\nTo: you@example.org\r\nSubject: hi\r\n"
        b"Message-ID: <t@example.org>\r\n\r\nhello\r\n")


def config(nats: settings.NatsSettings, **dispatcher: Any) -> settings.Settings:
    options: dict[str, Any] = {"discovery_interval_s": 0.2, "ack_wait_s": 10.0}
    options.update(dispatcher)
    return settings.Settings(nats=nats, dispatcher=settings.DispatcherSettings(**options),
                             grace_s=3.0)


def upstream_view(key: str, up: upstream_mod.Upstream | tuple[str, int], **kwargs: Any
                  ) -> snapshot.UpstreamView:
    host, port = up.address if isinstance(up, upstream_mod.Upstream) else up
    return snapshot.UpstreamView(key=key, host=host, port=port, **kwargs)


def policy_view(key: str, upstream: str, **kwargs: Any) -> snapshot.PolicyView:
    kwargs.setdefault("retry", FAST)
    return snapshot.PolicyView(key=key, upstream=upstream, **kwargs)


async def publish_snapshot(
    conn: bus.Conn, policies: list[snapshot.PolicyView],
    upstreams: list[snapshot.UpstreamView],
) -> int:
    snap = snapshot.PolicySnapshot(
        generated_at=datetime.now(UTC), policies={p.key: p for p in policies},
        upstreams={u.key: u for u in upstreams}, source="test")
    kv = await bus.policy_kv(conn)
    return await kv.put(conn.names.snapshot_key, snapshot.snapshot_encoder.encode(snap))


def envelope(policy: snapshot.PolicyView, rcpts: list[str], body: bytes | None = BODY,
             upstream: str | None = None, **kwargs: Any) -> mail.Envelope:
    return mail.Envelope(
        id=uuid.uuid4().hex, policy=policy.key, upstream=upstream or policy.upstream,
        mail_from="app@example.org", rcpt_to=rcpts, received_at=datetime.now(UTC),
        size=len(body or b""), body=body, **kwargs)


async def queue(conn: bus.Conn, env: mail.Envelope) -> None:
    """What ingress does: publish the envelope with the mail id as dedupe key."""
    await conn.js.publish(conn.names.mail_subject(env.upstream, env.policy),
                          mail.envelope_encoder.encode(env), headers={"Nats-Msg-Id": env.id})


@contextlib.asynccontextmanager
async def dispatcher(cfg: settings.Settings) -> AsyncIterator[asyncio.Event]:
    """A dispatcher `serve` in this loop; stopped (and awaited) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher_main.serve(cfg, stop))
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(cfg.grace_s + 10.0):
            await task


@contextlib.asynccontextmanager
async def recording_events(conn: bus.Conn) -> AsyncIterator[list[events.AnyEvent]]:
    """Every event published while inside, in order."""
    seen: list[events.AnyEvent] = []

    async def collect(msg: Msg) -> None:
        seen.append(events.event_decoder.decode(msg.data))

    sub = await conn.nc.subscribe(conn.names.events_filter(), cb=collect)
    try:
        yield seen
    finally:
        await sub.unsubscribe()


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 15.0
) -> None:
    """Poll ``check`` (sync or async) until it holds, bounded in time."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.05)


async def drained(conn: bus.Conn) -> bool:
    """True when the MAIL stream holds nothing."""
    return await queued(conn) == 0


async def queued(conn: bus.Conn) -> int:
    """Messages left in the MAIL stream (acked ones are removed: a work queue)."""
    info = await conn.js.stream_info(conn.names.mail_stream)
    return info.state.messages


async def stored(conn: bus.Conn, stream: str, type_: type[Any]) -> list[Any]:
    """Every message of a (small) stream, decoded."""
    info = await conn.js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        raw = await conn.js.get_msg(stream, seq)
        out.append(msgspec.json.decode(raw.data or b"", type=type_))
    return out


async def dead_letters(conn: bus.Conn) -> list[mail.DeadLetter]:
    letters: list[mail.DeadLetter] = await stored(conn, conn.names.dead_stream,
                                                  mail.DeadLetter)
    return letters


def of_kind(seen: list[events.AnyEvent], kind: type[Any]) -> list[Any]:
    return [e for e in seen if isinstance(e, kind)]
