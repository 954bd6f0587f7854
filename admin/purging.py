"""Purge dead letters: delete each from DEAD, say so with a `Purged` event, then delete
the body objects that nothing refers to any more.

A body object can be shared: a mail whose recipients met different fates has one body for
its dead letters and for the part still queued. So a body is deleted only when no
remaining dead letter and no queued mail refers to it. When the MAIL stream is too large
to check (`inspecting.MAIL_WALK_BUDGET`), it is kept and the BODIES bucket's TTL collects
it. The dead letter goes first, its body after: a crash in between leaves an object that
the TTL collects, never a dead letter without its body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import msgspec
import nats.js.errors

from admin import inspecting
from admin.rules import deadletters
from runtime import bus, eventing
from schemas import events

PURGED = "purged"
PLANNED = "planned"


def _nothing() -> None:
    pass


async def purge(
    conn: bus.Conn, chosen: Sequence[inspecting.Dead], *, dry_run: bool, now: datetime,
    advance: Callable[[], None] = _nothing,
) -> list[deadletters.Purge]:
    """Purge ``chosen``; one row each, saying what became of it and of its body."""
    rows: list[deadletters.Purge] = []
    for dead in chosen:
        item = dead.item
        if dry_run:
            rows.append(deadletters.Purge(seq=item.seq, mail_id=item.mail_id, outcome=PLANNED,
                                          body="none" if item.body_object is None else PLANNED))
            continue
        await delete_dead(conn, item.seq)
        await eventing.emit(conn, events.Purged(
            mail_id=item.mail_id, at=now, policy=item.policy, upstream=item.upstream,
            dead_seq=item.seq))
        rows.append(deadletters.Purge(seq=item.seq, mail_id=item.mail_id, outcome=PURGED))
        advance()
    if dry_run:
        return rows
    fates = await release_bodies(conn, [d.item.body_object for d in chosen
                                        if d.item.body_object is not None])
    by_seq = {d.item.seq: d.item.body_object for d in chosen}
    return [msgspec.structs.replace(row, body=fates.get(by_seq[row.seq] or "", "none"))
            for row in rows]


NO_MESSAGE = 10057
"""JetStream's error code for "no message found" (a 500 on delete)."""


async def delete_dead(conn: bus.Conn, seq: int) -> bool:
    """Delete one dead letter; False when it was gone already (another operator)."""
    try:
        async with asyncio.timeout(conn.deadlines.api_s):
            return await conn.js.delete_msg(conn.names.dead_stream, seq)
    except nats.js.errors.APIError as exc:
        if exc.err_code == NO_MESSAGE or isinstance(exc, nats.js.errors.NotFoundError):
            return False
        raise


async def release_bodies(conn: bus.Conn, candidates: Iterable[str]) -> dict[str, str]:
    """Delete the body objects among ``candidates`` that nothing refers to any more; by
    name: ``deleted``, ``missing`` (gone already), ``kept`` (still referred to) or
    ``unchecked`` (the MAIL stream was too large to check; the TTL collects it)."""
    wanted = set(candidates)
    if not wanted:
        return {}
    remaining = await inspecting.dead_letters(conn)
    used = {dead.item.body_object for dead in remaining.found if dead.item.body_object}
    queued = await inspecting.queued_body_refs(conn)
    if queued is None:
        return dict.fromkeys(wanted, "unchecked")
    fates = dict.fromkeys(wanted, "kept")
    store = await bus.bodies(conn)
    for name in deadletters.orphaned(wanted, used | queued):
        fates[name] = "deleted"
        try:
            async with asyncio.timeout(conn.deadlines.api_s):
                await store.delete(name)
        except nats.js.errors.NotFoundError:
            fates[name] = "missing"
    return fates

