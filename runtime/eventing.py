"""Publish events to the EVENTS stream.

Events are observability, not the mail: they go out with a core NATS publish (no wait for
a PubAck) so they never slow the hot path. The stream captures them; a broker outage may
lose some events, never a mail. The one exception is `record`: what an upstream accepted
must be on the record however often it happened, so that event is stored (its PubAck
awaited, a few tries, deduplicated by the caller's id).
"""

from __future__ import annotations

import asyncio

import structlog

from runtime import bus
from schemas import events

log = structlog.get_logger("podpost.eventing")


async def emit(conn: bus.Conn, event: events.AnyEvent) -> None:
    subject = conn.names.event_subject(events.kind_of(event))
    try:
        await conn.nc.publish(subject, events.event_encoder.encode(event))
    except bus.TRANSIENT as exc:
        log.warning("eventing.emit_failed", kind=events.kind_of(event),
                    mail_id=event.mail_id, error=str(exc) or type(exc).__name__)


RECORD_TRIES = 8
RECORD_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Pauses between tries, the last repeating: about 16 s in all, longer than a stream's
leader election (a stream without a leader answers "no response from stream" at once)."""


async def record(conn: bus.Conn, event: events.AnyEvent, msg_id: str) -> bool:
    """Store ``event`` on the EVENTS stream and await its PubAck (within ``publish_s``, cut
    when the link breaks or comes back, then tried again once it is up), `RECORD_TRIES`
    times at most, `RECORD_DELAYS_S` apart; ``msg_id`` makes a retry after a lost PubAck
    one event.
    Whether it was stored; a failure is logged, never raised."""
    subject = conn.names.event_subject(events.kind_of(event))
    payload = events.event_encoder.encode(event)
    for tried in range(1, RECORD_TRIES + 1):
        try:
            await conn.link.wait_up(conn.deadlines.publish_s)
            async with asyncio.timeout(conn.deadlines.publish_s):
                await bus.unless_link_changes(
                    conn.js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}),
                    conn.link.changed())
            return True
        except bus.TRANSIENT as exc:
            log.warning("eventing.record_failed", kind=events.kind_of(event), tried=tried,
                        mail_id=event.mail_id, error=str(exc) or type(exc).__name__)
            if tried < RECORD_TRIES:
                await asyncio.sleep(RECORD_DELAYS_S[min(tried, len(RECORD_DELAYS_S)) - 1])
    return False
