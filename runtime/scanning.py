"""Read a stream without disturbing it: every message matching a subject, or one by
sequence, for the operator's tools and whatever else must look at what a stream holds.

A scan uses a short-lived, memory-backed, unacknowledged pull consumer that fetches in
batches and stops at the number of messages it found when created (or when the server
says nothing is left), so a read is a handful of round trips, bounded in count and time,
and never disturbs the durable consumers. The MAIL stream is a work queue, which refuses a
second consumer on the same subjects: it can only be read by sequence (`get`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from runtime import bus

FETCH_BATCH = 256
FETCH_TIMEOUT_S = 5.0
"""A fetch returns at once when messages are there; this only bounds a stall."""
MAX_SCAN = 1_000_000
"""No read takes more messages than this, whatever the stream holds."""


@dataclass(frozen=True)
class Stored:
    """One message as a stream holds it."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    time: datetime | None


async def scan(
    conn: bus.Conn,
    stream: str,
    subject: str,
    *,
    start_time: datetime | None = None,
    start_seq: int | None = None,
    last_per_subject: bool = False,
    limit: int = MAX_SCAN,
) -> list[Stored]:
    """Every message of ``stream`` matching ``subject``, in stream order."""
    policy = DeliverPolicy.ALL
    if last_per_subject:
        policy = DeliverPolicy.LAST_PER_SUBJECT
    elif start_seq is not None:
        policy = DeliverPolicy.BY_START_SEQUENCE
    elif start_time is not None:
        policy = DeliverPolicy.BY_START_TIME
    name = f"podpost-cli-{secrets.token_hex(6)}"
    config = ConsumerConfig(
        name=name, filter_subject=subject, deliver_policy=policy, ack_policy=AckPolicy.NONE,
        opt_start_seq=start_seq if policy is DeliverPolicy.BY_START_SEQUENCE else None,
        opt_start_time=start_time if policy is DeliverPolicy.BY_START_TIME else None,
        inactive_threshold=60.0, mem_storage=True, num_replicas=1,
    )
    async with asyncio.timeout(conn.deadlines.api_s):
        info = await conn.js.add_consumer(stream, config)
    out: list[Stored] = []
    try:
        wanted = min(info.num_pending or 0, limit)
        if wanted == 0:
            return out
        psub = await conn.js.pull_subscribe_bind(consumer=name, stream=stream)
        try:
            for _ in range(wanted):  # each round takes at least one message, or stops
                try:
                    batch = await psub.fetch(min(FETCH_BATCH, wanted - len(out)),
                                             timeout=FETCH_TIMEOUT_S)
                except nats.errors.TimeoutError:
                    break  # messages deleted while we read: nothing more will come
                done = False
                for msg in batch:
                    meta = msg.metadata
                    out.append(Stored(seq=meta.sequence.stream, subject=msg.subject,
                                      data=msg.data, headers=dict(msg.headers or {}),
                                      time=meta.timestamp))
                    done = meta.num_pending == 0
                if done or len(out) >= wanted:
                    break
        finally:
            with contextlib.suppress(nats.errors.Error):
                await psub.unsubscribe()
    finally:
        with contextlib.suppress(*bus.TRANSIENT):
            async with asyncio.timeout(conn.deadlines.api_s):
                await conn.js.delete_consumer(stream, name)
    return out


async def get(conn: bus.Conn, stream: str, seq: int) -> Stored | None:
    """One message by sequence; None when the stream does not hold it."""
    try:
        async with asyncio.timeout(conn.deadlines.api_s):
            raw = await conn.js.get_msg(stream, seq=seq)
    except nats.js.errors.NotFoundError:
        return None
    return Stored(seq=raw.seq or seq, subject=raw.subject or "", data=raw.data or b"",
                  headers=dict(raw.headers or {}), time=raw.time)
