"""The two forms of an envelope on the MAIL stream (`schemas.mail`): the ingress writes
MessagePack by default and JSON when told to, and the dispatcher delivers either, so a
rolling upgrade may mix old and new replicas."""

from __future__ import annotations

import pytest

from loadkit import inprocess
from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import mail
from tests.support import dispatching as d
from tests.support import ingress as support

MESSAGE = b"From: app@example.com\r\nSubject: forms\r\n\r\n\xc3\xa9 8-bit body\r\n"


async def _raw_stored(conn: bus.Conn) -> list[bytes]:
    info = await conn.js.stream_info(conn.names.mail_stream)
    return [bytes((await conn.js.get_msg(conn.names.mail_stream, seq)).data or b"")
            for seq in range(info.state.first_seq, info.state.last_seq + 1)]


@pytest.mark.parametrize("binary", [True, False])
async def test_the_ingress_stores_the_form_it_is_told(
    conn: bus.Conn, nats_settings: settings.NatsSettings, binary: bool
) -> None:
    """``binary_envelopes`` on: MessagePack with the message bytes verbatim; off: JSON, as
    older readers expect. Either reads back to the same mail."""
    await inprocess.put_snapshot(conn)
    cfg = inprocess.make_settings(nats_settings, binary_envelopes=binary)
    async with inprocess.running(cfg) as ingress:
        reply = await support.send(ingress, "app@example.com", ["b@example.net"], MESSAGE)
    assert reply.startswith("2.0.0 queued as ")
    [raw] = await _raw_stored(conn)
    assert raw.startswith(b"{") is not binary
    assert (MESSAGE in raw) is binary
    [(_, env)] = await support.stored(conn)
    assert env.body is not None and env.body.endswith(MESSAGE)
    assert env.rcpt_to == ["b@example.net"]


async def test_the_dispatcher_delivers_either_form(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """A JSON envelope (an older ingress's) and a MessagePack one are both delivered, byte
    for byte."""
    policy = d.policy_view("apps/web", "mail/up")
    await d.publish_snapshot(conn, [policy], [d.upstream_view("mail/up", upstream)])
    old = d.envelope(policy, ["old@example.org"], body=b"Subject: old\r\n\r\njson\r\n")
    new = d.envelope(policy, ["new@example.org"], body=b"Subject: new\r\n\r\n\xff raw\r\n")
    async with d.dispatcher(d.config(nats_settings)):
        for env, binary in ((old, False), (new, True)):
            await conn.js.publish(conn.names.mail_subject(env.upstream, env.policy),
                                  mail.encode_envelope(env, binary=binary),
                                  headers={"Nats-Msg-Id": env.id})
        received = await upstream.handler.wait_for(2)
        await d.eventually(lambda: d.drained(conn))
    assert sorted((r.rcpt_to, r.data) for r in received) == [
        (["new@example.org"], new.body), (["old@example.org"], old.body)]
