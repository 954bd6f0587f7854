"""What a mail leaves on the bus and who removes it: a body read cut by a broker restart,
the backlog of cleanups whose ack was unconfirmed, and the sweep of orphaned attempt
records, body objects, delete markers and chunk sets; against a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from datetime import UTC, datetime

import msgspec
import nats.js.errors

from dispatcher import recording, sweeping
from loadkit import upstream as upstream_mod
from podpost import natsserver
from runtime import bodystore, bus, settings
from schemas import mail
from tests.support import dispatching

BIG = secrets.token_bytes(20 * 1024 * 1024)


def _ref(name: str, data: bytes) -> mail.BodyRef:
    return mail.BodyRef(name=name, size=len(data), sha256="")


def _envelope(mail_id: str, body_ref: mail.BodyRef | None = None) -> mail.Envelope:
    return mail.Envelope(id=mail_id, policy="apps/relay", upstream="apps/sink",
                         mail_from="a@example.org", rcpt_to=["b@example.org"],
                         received_at=datetime.now(UTC), size=1,
                         body=None if body_ref else b"x", body_ref=body_ref)


async def _queue(conn: bus.Conn, env: mail.Envelope) -> int:
    ack = await conn.js.publish(conn.names.mail_subject(env.upstream, env.policy),
                                mail.envelope_encoder.encode(env),
                                headers={"Nats-Msg-Id": env.id})
    return ack.seq


async def _record_exists(stores: recording.Stores, key: str) -> bool:
    try:
        entry = await stores.attempts.get(key)
    except nats.js.errors.KeyNotFoundError:
        return False
    return entry.value is not None


async def _object_exists(stores: recording.Stores, name: str) -> bool:
    try:
        await stores.bodies.get_info(name, show_deleted=True)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_a_body_read_cut_by_a_broker_restart_is_read_again_once_it_is_back(
    nats_server: natsserver.NatsServer, nats_settings: settings.NatsSettings,
) -> None:
    """A 20 MiB body read in flight when nats-server is SIGKILLed and restarted is cut
    at the disconnect and read again after the reconnect, well within a 10 s deadline
    (nats-py's own reader hung for 20 s and more there)."""
    async with bus.connect(nats_settings, "dispatcher", attempts=3) as conn:
        stores = await recording.open_stores(conn)
        await stores.bodies.put("big", BIG)
        env = _envelope("big", _ref("big", BIG))
        read = asyncio.create_task(bus.read_body(stores.bodies, env, 10.0, conn.link))
        await asyncio.sleep(0.05)
        await nats_server.kill()
        await asyncio.sleep(1.0)
        await nats_server.start()
        assert await read == BIG


async def test_an_unconfirmed_acks_cleanup_waits_until_the_stream_no_longer_holds_it(
    conn: bus.Conn,
) -> None:
    """A cleanup queued after an unconfirmed ack removes nothing while the MAIL stream
    still holds the message (its redelivery will clean up), and removes the record and
    the body once the message is gone (the ack had landed after all)."""
    stores = await recording.open_stores(conn)
    await stores.bodies.put("held", b"body" * 100)
    env = _envelope("held", _ref("held", b""))
    seq = await _queue(conn, env)
    await recording.put(stores, "held", mail.AttemptRecord(attempts=1, done=["b@example.org"]))
    stores.backlog.add(recording.Cleanup(key="held", record=True, body="held", seq=seq))
    await sweeping.retry_backlog(stores)
    assert await _record_exists(stores, "held")
    assert await _object_exists(stores, "held")
    assert [c.seq for c in stores.backlog.items] == [seq]
    await conn.js.delete_msg(conn.names.mail_stream, seq)  # what the landed ack did
    await sweeping.retry_backlog(stores)
    assert not await _record_exists(stores, "held")
    assert not await _object_exists(stores, "held")
    assert not stores.backlog.items


async def test_the_sweep_removes_residue_and_never_live_mail(conn: bus.Conn) -> None:
    """Records and objects no mail names, delete markers and a cut upload's chunks go;
    the record and body of queued mail, a dead letter's body and anything younger than
    the grace stay."""
    stores = await recording.open_stores(conn)
    for name in ("live", "dead", "gone"):
        await stores.bodies.put(name, name.encode() * 1000)
    await stores.bodies.put("marked", b"m")
    await stores.bodies.delete("marked")  # nats-py's delete leaves a marker
    await conn.js.publish(bodystore.chunks_subject(conn, "cutupload"), b"chunk")
    await _queue(conn, _envelope("live", _ref("live", b"")))
    await recording.put(stores, "live", mail.AttemptRecord(attempts=1))
    await recording.put(stores, "gone", mail.AttemptRecord(attempts=1))
    letter = mail.DeadLetter(envelope=_envelope("dead", _ref("dead", b"")), fate="permanent",
                             reason="550", dead_at=datetime.now(UTC))
    await conn.js.publish(conn.names.dead_subject("apps/sink"), msgspec.json.encode(letter))

    young = await sweeping.sweep(stores, now=datetime.now(UTC), grace_s=3600.0)
    assert young == sweeping.Swept()
    swept = await sweeping.sweep(stores, now=datetime.now(UTC), grace_s=0.0)

    assert dataclasses.astuple(swept) == (1, 2, 1, "")
    assert await _record_exists(stores, "live")
    assert not await _record_exists(stores, "gone")
    assert await _object_exists(stores, "live")
    assert await _object_exists(stores, "dead")
    assert not await _object_exists(stores, "gone")
    assert not await _object_exists(stores, "marked")
    info = await conn.js.stream_info(bodystore.stream(conn),
                                     subjects_filter=bodystore.chunks_subject(conn, ">"))
    assert bodystore.chunks_subject(conn, "cutupload") not in (info.state.subjects or {})
    assert await recording.body(stores, _envelope("live", _ref("live", b""))) == b"live" * 1000


async def test_a_delivered_mails_body_leaves_no_delete_marker(
    conn: bus.Conn, nats_settings: settings.NatsSettings,
) -> None:
    """Once a mail with a body in the object store is delivered and acked, neither its
    object nor a delete marker is left in the BODIES stream."""
    up = await upstream_mod.start()
    try:
        policy = dispatching.policy_view("apps/relay", "apps/sink")
        await dispatching.publish_snapshot(conn, [policy],
                                           [dispatching.upstream_view("apps/sink", up)])
        stores = await recording.open_stores(conn)
        await stores.bodies.put("withbody", dispatching.BODY)
        env = dispatching.envelope(policy, ["you@example.org"], body=None,
                                   body_ref=_ref("withbody", dispatching.BODY))
        await dispatching.queue(conn, env)
        async with dispatching.dispatcher(dispatching.config(nats_settings)):
            await up.handler.wait_for(1)
            await dispatching.eventually(lambda: dispatching.drained(conn))

            async def gone() -> bool:
                info = await conn.js.stream_info(bodystore.stream(conn))
                return info.state.messages == 0

            await dispatching.eventually(gone)
    finally:
        await up.close()
