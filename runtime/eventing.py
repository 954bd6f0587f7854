"""Publish events to the EVENTS stream.

Events are observability, not the mail: they go out with a core NATS publish (no wait for
a PubAck) so they never slow the hot path. The stream captures them; a broker outage may
lose some events, never a mail.
"""

from __future__ import annotations

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
