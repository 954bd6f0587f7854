"""`admin.queueing` against a real nats-server: listing leaves the dispatchers' consumer
exactly as it was, and a move interrupted at each of its steps is finished by the next
run with one copy, no original and no move left under way."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from admin import queueing
from admin.rules import queuedmail
from dispatcher import consumers
from runtime import bus, settings
from schemas import control, mail, names
from tests.support import dispatching as d

UP = "mail/up"
OTHER = "mail/other"


async def _queued(conn: bus.Conn, count: int) -> list[mail.Envelope]:
    policy = d.policy_view("apps/web", UP)
    envs = [d.envelope(policy, [f"u{i}@example.org"]) for i in range(count)]
    for env in envs:
        await d.queue(conn, env)
    return envs


async def test_listing_leaves_the_dispatchers_consumer_untouched(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """With a durable consumer holding some messages unacked, ``read`` lists every
    message and the consumer's delivered, pending and ack-pending counts do not change."""
    envs = await _queued(conn, 40)
    pair = consumers.Pair(UP, "apps/web")
    sub = await consumers.subscribe(conn, pair, d.config(nats_settings).dispatcher)
    try:
        held = await sub.fetch(5, timeout=2)  # a dispatcher working on five of them
        name = conn.names.consumer_name(*pair)
        before = await conn.js.consumer_info(conn.names.mail_stream, name)
        queue = await queueing.read(conn, datetime.now(UTC))
        after = await conn.js.consumer_info(conn.names.mail_stream, name)
        assert [q.item.mail_id for q in queue.found] == [e.id for e in envs]
        assert {q.item.state for q in queue.found} == {queuedmail.WAITING}
        assert (after.delivered, after.num_pending, after.num_ack_pending) == (
            before.delivered, before.num_pending, before.num_ack_pending)
        assert len(held) == 5 and after.num_ack_pending == 5
        infos = await bus.consumer_infos(conn)
        assert [info.name for info in infos] == [name]  # no consumer left behind
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize("crashed_after", ["intent", "copy", "copy-past-window", "delete"])
async def test_a_move_interrupted_after_each_step_is_finished_by_the_next_run(
    conn: bus.Conn, crashed_after: str
) -> None:
    """A killed move leaves its ``moving`` entry and, depending on the step, the copy or
    not and the original or not; the next run stores exactly one copy on the target,
    removes the original and the entry (also when the copy was stored longer ago than
    the duplicate window: it is found by its ``moved_from``)."""
    env, other = await _queued(conn, 2)
    queue = await queueing.read(conn, datetime.now(UTC))
    seq = queue.found[0].item.seq
    msg_id = queuedmail.move_msg_id(env.id, seq, OTHER)
    kv = await bus.control_kv(conn)
    await kv.put(names.moving_key(seq), control.encoder.encode(control.Moving(
        seq=seq, mail_id=env.id, to_upstream=OTHER, msg_id=msg_id, since=datetime.now(UTC))))
    if crashed_after != "intent":
        window_over = crashed_after == "copy-past-window"  # the server forgot the id
        await conn.js.publish(conn.names.mail_subject(OTHER, env.policy),
                              mail.envelope_encoder.encode(
                                  queuedmail.moved_envelope(env, seq, OTHER)),
                              headers=None if window_over else {"Nats-Msg-Id": msg_id})
    if crashed_after == "delete":
        await conn.js.delete_msg(conn.names.mail_stream, seq)

    again = await queueing.read(conn, datetime.now(UTC))
    assert set(again.steer.moving) == {seq}
    if crashed_after != "delete":
        (first,) = [q for q in again.found if q.item.seq == seq]
        assert (first.item.state, first.item.held_by) == (queuedmail.HELD, queuedmail.MOVING)
    rows = await queueing.finish_interrupted(conn, again, datetime.now(UTC))
    assert [r.outcome for r in rows] == (
        [] if crashed_after == "delete" else
        ["moved"] if crashed_after == "intent" else ["already-moved"])
    assert all(r.to_seq is not None for r in rows)

    final = await queueing.read(conn, datetime.now(UTC))
    by_upstream = sorted((q.item.upstream, q.item.mail_id, q.envelope.moved_from)
                         for q in final.found)
    assert by_upstream == sorted([(OTHER, env.id, seq), (UP, other.id, None)])
    assert final.steer.moving == {}


async def test_a_move_that_changes_the_attempts_key_carries_the_record(conn: bus.Conn) -> None:
    """A caught mail released to an upstream keys its attempt record by that upstream;
    moving it elsewhere stores the record under the copy's key too, so the copy keeps
    its count and its settled recipients."""
    policy = d.policy_view("apps/web", UP)
    env = d.envelope(policy, ["a@example.org", "b@example.org"], released_from=4)
    await d.queue(conn, env)
    record = mail.AttemptRecord(attempts=2, done=["a@example.org"])
    attempts = await bus.attempts_kv(conn)
    await attempts.put(mail.attempts_key(env), msgspec.json.encode(record))
    queue = await queueing.read(conn, datetime.now(UTC))
    rows = await queueing.move(conn, queue.found, to_upstream=OTHER, now=datetime.now(UTC))
    assert [r.outcome for r in rows] == ["moved"]
    (moved,) = (await queueing.read(conn, datetime.now(UTC))).found
    assert mail.attempts_key(moved.envelope) != mail.attempts_key(env)
    assert (moved.item.attempts, moved.item.rcpt_to) == (2, ["b@example.org"])
