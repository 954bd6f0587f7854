"""The ingress end to end: a real nats-server, the real ingress, real SMTP clients. Every
reply code of docs/architecture.md "One mail's trip" (steps 2-4), the trace headers, and
what lands in the MAIL stream."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import aiosmtplib
import pytest
import structlog

from ingress.rules import headers, mailid
from loadkit import inprocess
from loadkit.inprocess import HOSTNAME, NET, OPEN, STRICT
from runtime import bus, settings
from schemas import events
from tests.support import ingress as support

MESSAGE = (
    b"From: App <app@example.com>\r\n"
    b"To: someone@example.net\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b".a line that starts with a dot\r\n"
    b"8-bit: \xc3\xa9t\xc3\xa9\r\n"
)


@pytest.fixture
async def ingress(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> AsyncIterator[inprocess.Ingress]:
    await inprocess.put_snapshot(conn)
    async with inprocess.running(inprocess.make_settings(nats_settings)) as running:
        yield running


async def test_ehlo_advertises_size_8bitmime_and_smtputf8(ingress: inprocess.Ingress) -> None:
    """EHLO offers SIZE with the global limit, 8BITMIME and SMTPUTF8."""
    client = ingress.client()
    async with client:
        await client.ehlo()
        assert client.esmtp_extensions["size"] == str(25 * 1024 * 1024)
        assert client.supports_extension("8bitmime")
        assert client.supports_extension("smtputf8")
        assert HOSTNAME in client.last_ehlo_response.message  # type: ignore[union-attr]


async def test_a_mail_is_queued_with_trace_headers_and_an_accepted_event(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """250 2.0.0 with the content-derived id, after one envelope was stored on the policy's
    subject; the message gets Received, Message-ID and Date in front of the bytes sent."""
    rcpts = ["b@example.net", "a@example.net"]
    async with support.watching_events(conn) as seen:
        reply = await support.send(ingress, "app@example.com", rcpts, MESSAGE)
        mail_id = mailid.compute("app@example.com", rcpts, MESSAGE)
        assert reply == f"2.0.0 queued as {mail_id}"
        (event,) = await seen.wait_for(1)
    [(subject, envelope)] = await support.stored(conn)
    assert subject == conn.names.mail_subject(OPEN.upstream, OPEN.key)
    assert (envelope.id, envelope.policy, envelope.upstream) == (mail_id, OPEN.key,
                                                                  OPEN.upstream)
    assert (envelope.mail_from, envelope.rcpt_to) == ("app@example.com", rcpts)
    assert (envelope.client_ip, envelope.source, envelope.helo) == (
        "127.0.0.1", "pod:apps/app-1", "client.test")
    assert envelope.body_ref is None and envelope.body is not None
    assert envelope.size == len(envelope.body)
    body = envelope.body
    assert body.endswith(MESSAGE)
    prefix = body[: -len(MESSAGE)]
    assert [name for name, _ in headers.fields(prefix)] == ["received", "message-id", "date"]
    assert prefix.startswith(
        b"Received: from client.test (pod:apps/app-1 [127.0.0.1])\r\n"
        b"\tby " + HOSTNAME.encode() + b" (podpost) with ESMTP id " + mail_id.encode() + b";\r\n"
    )
    assert f"Message-ID: <{mail_id}@{HOSTNAME}>\r\n".encode() in prefix
    assert isinstance(event, events.Accepted)
    assert support.as_dict(event) | {"at": None} == {
        "mail_id": mail_id, "at": None, "policy": OPEN.key, "upstream": OPEN.upstream,
        "mail_from": "app@example.com", "rcpt_count": 2, "size": len(body),
        "client_ip": "127.0.0.1", "duplicate": False,
    }


async def test_message_id_and_date_present_are_kept(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """A message with Message-ID and Date only gets a Received field in front."""
    data = (b"Message-ID: <own@example.com>\r\nDate: Mon, 31 Mar 2025 00:00:00 +0000\r\n"
            b"From: app@example.com\r\n\r\nbody\r\n")
    await support.send(ingress, "app@example.com", ["x@example.net"], data)
    [(_, envelope)] = await support.stored(conn)
    assert envelope.body is not None
    prefix = envelope.body[: -len(data)]
    assert envelope.body.endswith(data)
    assert [name for name, _ in headers.fields(prefix)] == ["received"]
    assert b"\tfor <x@example.net>; " in prefix


async def test_the_same_transaction_twice_is_stored_once(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """A retried transaction gets the same id and 250, and JetStream keeps one copy; the
    second Accepted event says duplicate."""
    async with support.watching_events(conn) as seen:
        first = await support.send(ingress, "app@example.com", ["a@x.test", "b@x.test"], MESSAGE)
        second = await support.send(ingress, "app@example.com", ["b@x.test", "a@x.test"],
                                    MESSAGE)
        received = await seen.wait_for(2)
    assert first == second
    assert len(await support.stored(conn)) == 1
    assert [e.duplicate for e in received if isinstance(e, events.Accepted)] == [False, True]


async def test_a_cidr_route_admits_its_clients(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """A client inside a static CIDR gets that route's policy and upstream."""
    await support.send(ingress, "x@y.test", ["z@y.test"], MESSAGE, source="127.0.3.7")
    [(subject, envelope)] = await support.stored(conn)
    assert subject == conn.names.mail_subject(NET.upstream, NET.key)
    assert (envelope.policy, envelope.source, envelope.client_ip) == (
        NET.key, "static:apps/lab", "127.0.3.7")


async def test_no_policy_for_the_client_ip_is_550_naming_it_and_stores_nothing(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """An address no route covers is refused at MAIL with 550 5.7.1 naming the IP."""
    with structlog.testing.capture_logs() as logs:
        async with support.watching_events(conn) as seen:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await support.send(ingress, "x@y.test", ["z@y.test"], MESSAGE,
                                   source="127.0.0.5")
            (event,) = await seen.wait_for(1)
    assert refused.value.code == 550
    assert refused.value.message == "5.7.1 No policy admits client 127.0.0.5"
    assert await support.stored(conn) == []
    assert support.as_dict(event) | {"at": None} == {
        "mail_id": "", "at": None, "policy": "", "upstream": "", "code": 550,
        "reply": "550 5.7.1 No policy admits client 127.0.0.5", "client_ip": "127.0.0.5",
        "stage": "mail",
    }
    assert [entry for entry in logs if entry["event"] == "ingress.mail_rejected"] == [{
        "event": "ingress.mail_rejected", "log_level": "info", "smtp_code": 550,
        "reply": "550 5.7.1 No policy admits client 127.0.0.5", "stage": "mail",
        "client_ip": "127.0.0.5", "mail_from": "x@y.test", "policy": "",
    }]


async def test_a_sender_the_policy_does_not_allow_is_550(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """The envelope sender must match the policy's allowed_senders."""
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await support.send(ingress, "intruder@evil.test", ["z@y.test"], MESSAGE,
                           source="127.0.0.2")
    assert (refused.value.code, refused.value.message) == (
        550, "5.7.1 Sender <intruder@evil.test> is not allowed for this client")
    assert await support.stored(conn) == []


@pytest.mark.parametrize(
    ("sender", "from_line", "reply"),
    [
        ("app@example.com", b"From: intruder@evil.test\r\n",
         "5.7.1 From: address <intruder@evil.test> is not allowed for this client"),
        ("x@EXAMPLE.org", b"From: app@example.com, boss@evil.test\r\n",
         "5.7.1 From: address <boss@evil.test> is not allowed for this client"),
        ("app@example.com", b"", "5.7.1 From: header missing or unreadable"),
    ],
)
async def test_a_from_header_the_policy_does_not_allow_is_550_at_data(
    ingress: inprocess.Ingress, conn: bus.Conn, sender: str, from_line: bytes, reply: str
) -> None:
    """Every From: address must match allowed_senders too; checked at DATA."""
    data = from_line + b"Subject: x\r\n\r\nbody\r\n"
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await support.send(ingress, sender, ["z@y.test"], data, source="127.0.0.2")
    assert (refused.value.code, refused.value.message) == (550, reply)
    assert await support.stored(conn) == []


async def test_an_allowed_sender_and_from_are_queued(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """A strict policy queues mail whose sender and From: both match."""
    data = b"From: Any <someone@Example.ORG>\r\n\r\nbody\r\n"
    reply = await support.send(ingress, "app@example.com", ["z@y.test"], data,
                               source="127.0.0.2")
    assert reply.startswith("2.0.0 queued as ")
    [(subject, _)] = await support.stored(conn)
    assert subject == conn.names.mail_subject(STRICT.upstream, STRICT.key)


@pytest.mark.parametrize(
    ("source", "size", "limit"),
    [("127.0.0.1", 25 * 1024 * 1024 + 1, 25 * 1024 * 1024),  # over the global limit
     ("127.0.0.2", 4097, 4096)],  # over the policy's own limit
)
async def test_a_declared_size_over_the_limit_is_552_at_mail(
    ingress: inprocess.Ingress, conn: bus.Conn, source: str, size: int, limit: int
) -> None:
    """SIZE= over the limit is refused with 552 5.3.4 before any data is sent."""
    client = ingress.client(source)
    async with client:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.mail("app@example.com", options=[f"SIZE={size}"])
    assert refused.value.code == 552
    assert refused.value.message == (
        f"5.3.4 Message size exceeds fixed maximum message size of {limit} bytes")
    assert await support.stored(conn) == []


@pytest.mark.parametrize(("source", "size"), [("127.0.0.1", 25 * 1024 * 1024 + 1000),
                                              ("127.0.0.2", 5000)])
async def test_data_over_the_limit_without_size_is_552(
    ingress: inprocess.Ingress, conn: bus.Conn, source: str, size: int
) -> None:
    """A client that does not declare its size still gets 552 5.3.4 when DATA exceeds the
    limit, and the session stays usable."""
    data = b"From: app@example.com\r\n\r\n" + (b"x" * 998 + b"\r\n") * (size // 1000 + 1)
    async with support.watching_events(conn) as seen:
        client = ingress.client(source)
        async with client:
            await client.mail("app@example.com")
            await client.rcpt("z@y.test")
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await client.data(data)
            assert (await client.noop()).code == 250
        (event,) = await seen.wait_for(1)
    assert refused.value.code == 552
    assert refused.value.message.startswith("5.3.4 Message size exceeds")
    assert isinstance(event, events.Rejected)
    assert (event.code, event.stage) == (552, "data")
    assert await support.stored(conn) == []


async def test_more_recipients_than_allowed_is_452_and_the_rest_are_queued(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Beyond max_recipients each RCPT gets 452 4.5.3; the accepted ones are queued."""
    await inprocess.put_snapshot(conn)
    cfg = inprocess.make_settings(nats_settings, max_recipients=3)
    async with inprocess.running(cfg) as ingress:
        client = ingress.client()
        async with client:
            await client.mail("app@example.com")
            for rcpt in ("a@x.test", "b@x.test", "c@x.test"):
                await client.rcpt(rcpt)
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt("d@x.test")
            reply = await client.data(MESSAGE)
    assert (refused.value.code, refused.value.message) == (452, "4.5.3 Too many recipients")
    assert reply.code == 250
    [(_, envelope)] = await support.stored(conn)
    assert envelope.rcpt_to == ["a@x.test", "b@x.test", "c@x.test"]


async def test_no_snapshot_loaded_yet_is_451(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Until the first snapshot arrives every transaction is told to retry: 451 4.3.0."""
    async with inprocess.running(inprocess.make_settings(nats_settings)) as ingress:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await support.send(ingress, "app@example.com", ["z@y.test"], MESSAGE)
    assert refused.value.code == 451
    assert refused.value.message.startswith("4.3.0 ")
    assert await support.stored(conn) == []


async def test_a_body_over_the_inline_limit_goes_to_the_object_store(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """The envelope carries a BodyRef (name = mail id, size, sha256) and the object holds
    the whole stored message."""
    await inprocess.put_snapshot(conn)
    data = MESSAGE + b"y" * 900 + b"\r\n"
    async with inprocess.running(inprocess.make_settings(nats_settings, inline_limit=1024)) as ing:
        reply = await support.send(ing, "app@example.com", ["z@y.test"], data)
    [(_, envelope)] = await support.stored(conn)
    assert reply == f"2.0.0 queued as {envelope.id}"
    assert envelope.body is None and envelope.body_ref is not None
    stored = await support.message_of(conn, envelope)
    assert stored.endswith(data) and stored.startswith(b"Received: ")
    assert envelope.body_ref.name == envelope.id
    assert envelope.body_ref.size == len(stored) == envelope.size
    assert envelope.body_ref.sha256 == hashlib.sha256(stored).hexdigest()


async def test_a_10_mib_message_is_stored_byte_identical(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """Ten MiB of 8-bit lines, some starting with a dot, come out exactly as sent, behind
    the prepended fields."""
    line = bytes(range(0x20, 0x7F)) + bytes(range(0xA0, 0x100))  # 191 bytes, 8-bit
    lines = [(b"." if i % 7 == 0 else b"") + line * 5 + b"%d\r\n" % i
             for i in range(10 * 1024 * 1024 // 960)]
    data = b"From: app@example.com\r\nSubject: big\r\n\r\n" + b"".join(lines)
    assert len(data) >= 10 * 1024 * 1024
    reply = await support.send(ingress, "app@example.com", ["z@y.test"], data)
    [(_, envelope)] = await support.stored(conn)
    assert reply == f"2.0.0 queued as {mailid.compute('app@example.com', ['z@y.test'], data)}"
    assert envelope.body_ref is not None
    stored = await support.message_of(conn, envelope)
    assert stored[-len(data):] == data
    prefix = stored[: -len(data)]
    assert [name for name, _ in headers.fields(prefix)] == ["received", "message-id", "date"]


async def test_ehlo_advertises_pipelining_and_a_pipelining_client_is_served_in_order(
    ingress: inprocess.Ingress, conn: bus.Conn
) -> None:
    """EHLO offers PIPELINING (RFC 2920), and a client that sends MAIL, two RCPTs and DATA
    in one write, then the body and QUIT in another, gets every reply in order and its mail
    queued once."""
    raw = await support.Raw.connect(ingress)
    try:
        ehlo = await raw.command(b"EHLO client.test")
        assert b"250-PIPELINING\r\n" in ehlo and ehlo.endswith(b"250 HELP\r\n")
        raw.writer.write(b"MAIL FROM:<app@example.com>\r\n"
                         b"RCPT TO:<a@example.net>\r\n"
                         b"RCPT TO:<b@example.net>\r\n"
                         b"DATA\r\n")
        await raw.writer.drain()
        group = [await raw.reply() for _ in range(4)]
        assert [line[:4] for line in group] == [b"250 ", b"250 ", b"250 ", b"354 "]
        raw.writer.write(MESSAGE.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
        await raw.writer.drain()
        queued, bye = await raw.reply(), await raw.reply()
    finally:
        await raw.close()
    mail_id = mailid.compute("app@example.com", ["a@example.net", "b@example.net"], MESSAGE)
    assert queued == f"250 2.0.0 queued as {mail_id}\r\n".encode()
    assert bye.startswith(b"221 ")
    [(_, envelope)] = await support.stored(conn)
    assert envelope.id == mail_id and envelope.body is not None
    assert envelope.body.endswith(MESSAGE)
