"""What the console reads from the bus, as its rows: through `runtime.mailstore` (the same
reads the operator's commands use), folded by `console.rules`.

A list row's Subject is read from inline bodies only (the catcher's bodies up to 256 KiB
travel inline); a mail kept in the object store shows its Subject once opened.
"""

from __future__ import annotations

import msgspec

from console.rules import inbox, message
from runtime import bus, mailstore
from schemas import mail, names


class NotFound(Exception):
    """No such caught mail or dead letter (any more)."""


async def caught_rows(conn: bus.Conn, namespace: str | None
                      ) -> tuple[list[inbox.CaughtRow], int]:
    """Every caught mail of one namespace (or all), and how many could not be read."""
    read = await mailstore.caught(conn, namespace=namespace)
    rows = []
    for kept in read.found:
        body = kept.value.envelope.body
        subject = message.subject_of(body) if body is not None else ""
        rows.append(inbox.caught_row(kept.seq, kept.value, subject))
    return rows, read.unreadable


async def caught_mail(conn: bus.Conn, seq: int) -> tuple[mailstore.Kept[mail.Caught], bytes]:
    """One caught mail and its stored bytes."""
    kept = await mailstore.caught_one(conn, seq)
    if kept is None:
        raise NotFound(f"no caught mail {seq}")
    try:
        data = await mailstore.body(conn, kept.value.envelope)
    except mailstore.BodyMissing as exc:
        raise NotFound(str(exc)) from None
    return kept, data


async def dead_rows(conn: bus.Conn) -> tuple[list[inbox.DeadRow], int]:
    read = await mailstore.dead_letters(conn)
    return [inbox.dead_row(kept.seq, kept.value) for kept in read.found], read.unreadable


async def dead_letter(conn: bus.Conn, seq: int) -> mailstore.Kept[mail.DeadLetter]:
    kept = await mailstore.dead_letter(conn, seq)
    if kept is None:
        raise NotFound(f"no dead letter {seq}")
    return kept


async def queue(conn: bus.Conn) -> list[inbox.QueueRow]:
    bus_names = conn.names
    counts = await mailstore.subject_counts(conn, bus_names.mail_stream, bus_names.mail_filter())
    return inbox.queue_rows(bus_names, counts)


class Upstream(msgspec.Struct, frozen=True, kw_only=True):
    """An upstream a caught mail can be released to: its key and address, no login."""

    key: str
    host: str
    port: int


async def upstreams(conn: bus.Conn) -> list[Upstream]:
    """The upstreams of the current policy snapshot (never the catcher)."""
    stored = await bus.read_snapshot(conn)
    if stored.snapshot is None:
        return []
    return [Upstream(key=key, host=view.host, port=view.port)
            for key, view in sorted(stored.snapshot.upstreams.items()) if key != names.CATCHER]
