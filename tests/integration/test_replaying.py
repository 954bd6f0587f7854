"""Replaying and purging dead letters against a real nats-server, in process: the
``Nats-Msg-Id`` of a replay makes a second replay of one dead letter a duplicate, and a
body kept in the object store survives for whoever still needs it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import msgspec
import nats.js.errors

from admin import inspecting
from runtime import bus, requeueing
from schemas import mail
from tests.support import dispatching as d

UP = "mail/up"
POLICY = "apps/web"
BIG = d.BODY + b"x" * 300_000


async def _dead(conn: bus.Conn, env: mail.Envelope) -> inspecting.Dead:
    letter = mail.DeadLetter(envelope=env, fate="permanent", code=550,
                             dead_at=datetime.now(UTC))
    ack = await conn.js.publish(conn.names.dead_subject(UP), msgspec.json.encode(letter))
    dead = await inspecting.dead_letter(conn, ack.seq)
    assert dead is not None
    return dead


async def _big(conn: bus.Conn, rcpt: str) -> mail.Envelope:
    env = d.envelope(d.policy_view(POLICY, UP), [rcpt], body=None)
    store = await bus.bodies(conn)
    await store.put(env.id, BIG)
    return msgspec.structs.replace(env, size=len(BIG), body_ref=mail.BodyRef(
        name=env.id, size=len(BIG), sha256=hashlib.sha256(BIG).hexdigest()))


async def test_a_dead_letter_replayed_twice_is_queued_once(conn: bus.Conn) -> None:
    """The second replay of the same dead letter (two operators who both read it before
    either removed it) is dropped by the MAIL stream's duplicate window."""
    dead = await _dead(conn, await _big(conn, "a@example.org"))
    now = datetime.now(UTC)
    first = await requeueing.replay(conn, [dead], to_upstream=None, dry_run=False, now=now)
    second = await requeueing.replay(conn, [dead], to_upstream=None, dry_run=False, now=now)
    assert [row.outcome for row in first + second] == ["queued", "already-queued"]
    assert first[0].msg_id == mail.replay_msg_id(dead.item.mail_id, dead.item.seq)
    [(subject, queued)] = await _mail(conn)
    assert subject == conn.names.mail_subject(UP, POLICY)
    assert queued.replay_of == dead.item.seq
    assert queued.body_ref is not None and queued.body_ref.name == first[0].msg_id
    store = await bus.bodies(conn)
    assert (await store.get(queued.body_ref.name)).data == BIG
    assert await d.dead_letters(conn) == []


async def test_a_shared_body_outlives_the_replay_of_one_of_its_dead_letters(
    conn: bus.Conn
) -> None:
    """Two dead letters of one mail share its body object: replaying one leaves the body
    for the other, whose own replay still carries it byte for byte; the original object
    goes once nothing refers to it."""
    env = await _big(conn, "a@example.org")
    one = await _dead(conn, env)
    other = await _dead(conn, msgspec.structs.replace(env, rcpt_to=["b@example.org"]))
    now = datetime.now(UTC)
    await requeueing.replay(conn, [one], to_upstream=None, dry_run=False, now=now)
    store = await bus.bodies(conn)
    assert (await store.get(env.id)).data == BIG
    await requeueing.replay(conn, [other], to_upstream=None, dry_run=False, now=now)
    for _, queued in await _mail(conn):
        assert queued.body_ref is not None
        assert (await store.get(queued.body_ref.name)).data == BIG
    try:
        await store.get_info(env.id)
        raise AssertionError("the original body should be gone")
    except nats.js.errors.NotFoundError:
        pass


async def test_a_body_used_by_queued_mail_is_kept_by_purge(conn: bus.Conn) -> None:
    """A mail whose other recipients are still queued keeps its body when its dead
    letter is purged."""
    env = await _big(conn, "a@example.org")
    dead = await _dead(conn, env)
    await d.queue(conn, msgspec.structs.replace(env, rcpt_to=["b@example.org"]))
    [row] = await requeueing.purge(conn, [dead], dry_run=False, now=datetime.now(UTC))
    assert (row.outcome, row.body) == ("purged", "kept")
    store = await bus.bodies(conn)
    assert (await store.get(env.id)).data == BIG


async def _mail(conn: bus.Conn) -> list[tuple[str, mail.Envelope]]:
    info = await conn.js.stream_info(conn.names.mail_stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw = await conn.js.get_msg(conn.names.mail_stream, seq)
        out.append((raw.subject or "", mail.envelope_decoder.decode(raw.data or b"")))
    return out
