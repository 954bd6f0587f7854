"""Act on the mail podpost keeps: replay and purge dead letters, release and delete caught
mail. The operator's commands (``admin``) and the web console (``console``) both do these,
so they live here, once.

**Replay** a dead letter, in this order, so that nothing is referred to before it is stored:

1. A body kept in the object store is copied to an object of the replay's own, named like
   the replay's ``Nats-Msg-Id``. The dispatcher deletes a delivered mail's body object; with
   a copy of its own, a replay never takes away a body that the original mail's other
   recipients, another dead letter or another replay still need.
2. The envelope, marked ``replay_of=<DEAD sequence>`` (so it gets a fresh attempt count)
   and maybe routed to another upstream, is published to ``mail.out.<upstream>.<policy>``
   with ``Nats-Msg-Id: <mail id>.replay.<DEAD sequence>`` (`mail.replay_msg_id`). Within
   the MAIL stream's duplicate window (an hour) one dead letter is queued once, however
   often and by however many operators at once it is replayed.
3. A `Replayed` event, then the dead letter is deleted from DEAD: a replay *moves* it, as a
   queue redrive does. A replay that fails again becomes a new dead letter whose
   ``replay_of`` says where it came from; ``podpost trace`` keeps the history.
4. When all are done, each original body object is deleted if nothing refers to it any
   more (`release_bodies`).

**Purge** deletes each dead letter from DEAD, says so with a `Purged` event, then deletes
the body objects nothing refers to any more. A body object can be shared: a mail whose
recipients met different fates has one body for its dead letters and for the part still
queued, so it is deleted only when no remaining dead letter and no queued mail refers to
it. When the MAIL stream is too large to check (`mailstore.MAIL_WALK_BUDGET`), it is kept
and the BODIES bucket's TTL collects it. The dead letter goes first, its body after: a
crash in between leaves an object that the TTL collects, never a dead letter without body.

**Release** a caught mail to an upstream: steps 1 and 2 of a replay, with
``Nats-Msg-Id: <mail id>.release.<CAUGHT sequence>.<upstream>`` (`mail.release_msg_id`),
so a release repeated after a crash or a double click queues it once. The caught copy
stays (as Mailpit's release keeps the message); delete it separately.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import msgspec
import nats.js.errors
from nats.js.object_store import ObjectStore

from runtime import bus, eventing, mailstore
from schemas import events, mail

QUEUED = "queued"
ALREADY_QUEUED = "already-queued"
BODY_MISSING = "body-missing"
PLANNED = "planned"
PURGED = "purged"


class Replay(msgspec.Struct, frozen=True, kw_only=True):
    """One dead letter sent back to the MAIL stream (or, in a dry run, that would be)."""

    seq: int
    mail_id: str
    policy: str
    from_upstream: str
    to_upstream: str
    subject: str
    msg_id: str
    rcpt_to: list[str]
    outcome: str = PLANNED
    """``planned`` (dry run), ``queued``, ``already-queued`` (the MAIL stream's duplicate
    window dropped it: an earlier replay of this dead letter was stored) or
    ``body-missing`` (its body object is gone: nothing was queued, the dead letter stays)."""
    mail_seq: int | None = None


class Purge(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    mail_id: str
    outcome: str = PLANNED
    """``planned`` (dry run) or ``purged``."""
    body: str = "none"
    """What happened to its body object: ``none`` (inline), ``planned`` (dry run),
    ``deleted``, ``kept`` (another dead letter or a queued mail still needs it),
    ``unchecked`` (the MAIL stream was too large to check, so it is kept; the bucket's TTL
    collects it) or ``missing``."""


class Release(msgspec.Struct, frozen=True, kw_only=True):
    """One caught mail queued for an upstream."""

    seq: int
    mail_id: str
    policy: str
    to_upstream: str
    msg_id: str
    outcome: str
    """``queued``, ``already-queued`` (released to this upstream before) or
    ``body-missing``."""
    mail_seq: int | None = None


def _nothing() -> None:
    pass


def orphaned(candidates: Iterable[str], still_used: Iterable[str]) -> list[str]:
    """Body objects nothing refers to any more, in a stable order."""
    used = set(still_used)
    return sorted({name for name in candidates if name not in used})


# --- queueing a kept mail again -----------------------------------------------------------


async def _queue(conn: bus.Conn, store: ObjectStore | None, env: mail.Envelope, msg_id: str
                 ) -> tuple[str, int | None]:
    """Publish ``env`` to its MAIL subject with ``msg_id``, its body object copied first
    under that name: (outcome, MAIL sequence)."""
    if env.body_ref is not None:
        assert store is not None
        copy = await _copy_body(conn, store, env, msg_id)
        if copy is None:
            return BODY_MISSING, None
        env = msgspec.structs.replace(env, body_ref=copy)
    subject = conn.names.mail_subject(env.upstream, env.policy)
    async with asyncio.timeout(conn.deadlines.publish_s):
        ack = await conn.js.publish(subject, mail.envelope_encoder.encode(env),
                                    headers={"Nats-Msg-Id": msg_id})
    return (ALREADY_QUEUED if ack.duplicate else QUEUED), ack.seq


async def _copy_body(conn: bus.Conn, store: ObjectStore, env: mail.Envelope, name: str
                     ) -> mail.BodyRef | None:
    """The copy of the envelope's body object under ``name``: already there when this
    mail was queued again before (the same bytes), else copied. None when both are gone."""
    ref = env.body_ref
    assert ref is not None
    copy = mail.BodyRef(name=name, size=ref.size, sha256=ref.sha256)
    timeout_s = conn.deadlines.body_s
    try:
        async with asyncio.timeout(timeout_s):
            await store.get_info(name)
        return copy
    except nats.js.errors.NotFoundError:
        pass
    data = await bus.read_body(store, env, timeout_s)
    if data is None:
        return None
    async with asyncio.timeout(timeout_s):
        await store.put(name, data)
    return copy


async def _store_for(conn: bus.Conn, envs: Iterable[mail.Envelope]) -> ObjectStore | None:
    return await bus.bodies(conn) if any(env.body_ref for env in envs) else None


# --- dead letters -------------------------------------------------------------------------


async def replay(
    conn: bus.Conn, chosen: Sequence[mailstore.Kept[mail.DeadLetter]], *,
    to_upstream: str | None, dry_run: bool, now: datetime,
    advance: Callable[[], None] = _nothing,
) -> list[Replay]:
    """Replay ``chosen`` in stream order; one row each saying what became of it."""
    store = None if dry_run else await _store_for(conn, (d.value.envelope for d in chosen))
    rows: list[Replay] = []
    moved: set[str] = set()
    for dead in chosen:
        row = await _replay_one(conn, store, dead, to_upstream=to_upstream, dry_run=dry_run,
                                now=now)
        rows.append(row)
        ref = dead.value.envelope.body_ref
        if ref is not None and row.outcome in (QUEUED, ALREADY_QUEUED):
            moved.add(ref.name)
        advance()
    await release_bodies(conn, moved)
    return rows


async def _replay_one(
    conn: bus.Conn, store: ObjectStore | None, dead: mailstore.Kept[mail.DeadLetter], *,
    to_upstream: str | None, dry_run: bool, now: datetime,
) -> Replay:
    env = dead.value.envelope
    seq = dead.seq
    msg_id = mail.replay_msg_id(env.id, seq)
    again = mail.replay_envelope(env, seq, to_upstream)
    row = Replay(seq=seq, mail_id=env.id, policy=env.policy, from_upstream=env.upstream,
                 to_upstream=again.upstream,
                 subject=conn.names.mail_subject(again.upstream, again.policy),
                 msg_id=msg_id, rcpt_to=list(env.rcpt_to), outcome=PLANNED)
    if dry_run:
        return row
    outcome, mail_seq = await _queue(conn, store, again, msg_id)
    if outcome == BODY_MISSING:
        return msgspec.structs.replace(row, outcome=BODY_MISSING)
    if outcome == QUEUED:  # a duplicate was replayed (and its event sent) before
        await eventing.emit(conn, events.Replayed(
            mail_id=env.id, at=now, policy=env.policy, upstream=env.upstream, dead_seq=seq,
            to_upstream=again.upstream))
    await delete_dead(conn, seq)
    return msgspec.structs.replace(row, outcome=outcome, mail_seq=mail_seq)


async def purge(
    conn: bus.Conn, chosen: Sequence[mailstore.Kept[mail.DeadLetter]], *, dry_run: bool,
    now: datetime, advance: Callable[[], None] = _nothing,
) -> list[Purge]:
    """Purge ``chosen``; one row each, saying what became of it and of its body."""
    rows: list[Purge] = []
    bodies = {dead.seq: _body_name(dead.value.envelope) for dead in chosen}
    for dead in chosen:
        env = dead.value.envelope
        if dry_run:
            rows.append(Purge(seq=dead.seq, mail_id=env.id, outcome=PLANNED,
                              body="none" if bodies[dead.seq] is None else PLANNED))
            continue
        await delete_dead(conn, dead.seq)
        await eventing.emit(conn, events.Purged(
            mail_id=env.id, at=now, policy=env.policy, upstream=env.upstream,
            dead_seq=dead.seq))
        rows.append(Purge(seq=dead.seq, mail_id=env.id, outcome=PURGED))
        advance()
    if dry_run:
        return rows
    fates = await release_bodies(conn, [name for name in bodies.values() if name is not None])
    return [msgspec.structs.replace(row, body=fates.get(bodies[row.seq] or "", "none"))
            for row in rows]


def _body_name(env: mail.Envelope) -> str | None:
    return env.body_ref.name if env.body_ref else None


NO_MESSAGE = 10057
"""JetStream's error code for "no message found" (a 500 on delete)."""


async def delete_dead(conn: bus.Conn, seq: int) -> bool:
    """Delete one dead letter; False when it was gone already (another operator)."""
    return await _delete(conn, conn.names.dead_stream, seq)


async def _delete(conn: bus.Conn, stream: str, seq: int) -> bool:
    try:
        async with asyncio.timeout(conn.deadlines.api_s):
            return await conn.js.delete_msg(stream, seq)
    except nats.js.errors.APIError as exc:
        if exc.err_code == NO_MESSAGE or isinstance(exc, nats.js.errors.NotFoundError):
            return False
        raise


async def release_bodies(conn: bus.Conn, candidates: Iterable[str]) -> dict[str, str]:
    """Delete the body objects among ``candidates`` that no dead letter and no queued mail
    refers to any more; for each, ``deleted``, ``missing``, ``kept`` (still referred to) or
    ``unchecked`` (the MAIL stream was too large to check; the TTL collects it)."""
    wanted = set(candidates)
    if not wanted:
        return {}
    remaining = await mailstore.dead_letters(conn)
    used = {name for dead in remaining.found
            if (name := _body_name(dead.value.envelope)) is not None}
    queued = await mailstore.queued_body_refs(conn)
    if queued is None:
        return dict.fromkeys(wanted, "unchecked")
    fates = dict.fromkeys(wanted, "kept")
    store = await bus.bodies(conn)
    for name in orphaned(wanted, used | queued):
        fates[name] = "deleted"
        try:
            async with asyncio.timeout(conn.deadlines.api_s):
                await store.delete(name)
        except nats.js.errors.NotFoundError:
            fates[name] = "missing"
    return fates


# --- caught mail --------------------------------------------------------------------------


async def release(conn: bus.Conn, kept: mailstore.Kept[mail.Caught], *, to_upstream: str
                  ) -> Release:
    """Queue a caught mail for ``to_upstream`` under its policy (see the module docstring);
    the dispatcher then delivers it like any mail, with retries and dead letters."""
    env = kept.value.envelope
    msg_id = mail.release_msg_id(env.id, kept.seq, to_upstream)
    # Marked, so its attempt record (`mail.attempts_key`) is its own: not the caught
    # copy's, nor that of a release of the same mail to another upstream.
    again = msgspec.structs.replace(env, upstream=to_upstream, released_from=kept.seq,
                                    replay_of=None)
    store = await _store_for(conn, [again])
    outcome, mail_seq = await _queue(conn, store, again, msg_id)
    return Release(seq=kept.seq, mail_id=env.id, policy=env.policy, to_upstream=to_upstream,
                   msg_id=msg_id, outcome=outcome, mail_seq=mail_seq)


async def delete_caught(conn: bus.Conn, seq: int) -> bool:
    """Delete one caught mail from CAUGHT; False when it was gone already. A body object
    it referred to is left to the BODIES bucket's TTL (a release may still be copying it)."""
    return await _delete(conn, conn.names.caught_stream, seq)
