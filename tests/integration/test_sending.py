"""`dispatcher.sending` against real aiosmtpd upstreams: every way a session ends is an
`Outcome`, never an exception."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosmtplib
import msgspec
import pytest
import trustme

from dispatcher import sending
from dispatcher.rules.outcome import Outcome
from loadkit import upstream as upstream_mod
from reconciler.rules import building
from runtime import settings
from schemas import resources, snapshot

MAIL = b"From: app@example.org\r\nTo: you@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
USERS = {"alice": "s3cret-alice"}


PIPELINING = [False]
"""Whether `running` upstreams offer PIPELINING: every test here runs both ways."""


@pytest.fixture(autouse=True, params=[False, True], ids=["one-by-one", "pipelined"])
def _pipelining(request: pytest.FixtureRequest) -> Iterator[None]:
    PIPELINING[0] = request.param
    yield
    PIPELINING[0] = False


@contextlib.asynccontextmanager
async def running(
    handler: upstream_mod.Handler | None = None, *, check_pipelining: bool = True,
    **kwargs: Any,
) -> AsyncIterator[upstream_mod.Upstream]:
    handler = handler or upstream_mod.Handler()
    handler.pipelining = PIPELINING[0]
    up = await upstream_mod.start(handler, **kwargs)
    try:
        yield up
    finally:
        await up.close()
    if check_pipelining:  # every transaction went out the way the upstream offered
        assert all(handler.pipelined) if PIPELINING[0] else not any(handler.pipelined)


def view(up: upstream_mod.Upstream, **kwargs: Any) -> snapshot.UpstreamView:
    return snapshot.UpstreamView(key="mail/upstream", host=up.host, port=up.port, **kwargs)


async def deliver(
    upstream: snapshot.UpstreamView,
    creds: snapshot.Credentials | None = None,
    *,
    cfg: settings.DispatcherSettings | None = None,
    rcpts: Sequence[str] = ("you@example.org",),
    data: bytes = MAIL,
    timeout_s: float = 5.0,
) -> Outcome:
    """Connect, send one mail, QUIT: what one delivery does without the pool."""
    cfg = cfg or settings.DispatcherSettings()
    opened = await sending.connect(
        upstream, creds, tls=sending.tls_context(cfg), timeout_s=timeout_s,
        local_hostname="dispatcher.test",
    )
    if isinstance(opened, Outcome):
        return opened
    try:
        return await sending.send(opened, "app@example.org", rcpts, data, timeout_s=timeout_s)
    finally:
        await sending.close(opened)


def codes(outcome: Outcome) -> dict[str, int]:
    return {result.rcpt: result.code for result in outcome.rcpts}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("ca") / "company-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    yield path


@pytest.fixture
def trusting(ca_file: Path) -> settings.DispatcherSettings:
    """Dispatcher settings that trust the test CA through ``tls_ca_file``."""
    return settings.DispatcherSettings(tls_ca_file=str(ca_file))


async def test_plain_delivery_gives_every_recipient_the_data_reply() -> None:
    """Over plain SMTP all recipients get DATA's 250 and the upstream has the mail."""
    async with running() as up:
        outcome = await deliver(view(up), rcpts=["a@example.org", "b@example.org"])
    assert outcome.failure is None
    assert codes(outcome) == {"a@example.org": 250, "b@example.org": 250}
    assert outcome.rcpts[0].reply.startswith("2.0.0 OK")
    [got] = up.handler.messages
    assert got.rcpt_to == ["a@example.org", "b@example.org"]
    assert got.data.replace(b"\r\n", b"\n") == MAIL.replace(b"\r\n", b"\n")
    assert not got.tls
    assert f"SIZE={len(MAIL)}" in got.mail_options


async def test_eight_bit_body_is_announced_as_8bitmime() -> None:
    """A body with 8-bit bytes goes with BODY=8BITMIME when the upstream offers it."""
    data = MAIL.replace(b"hello", "grüße".encode())
    async with running() as up:
        outcome = await deliver(view(up), data=data)
    assert codes(outcome) == {"you@example.org": 250}
    assert "BODY=8BITMIME" in up.handler.messages[0].mail_options


async def test_utf8_address_needs_smtputf8_from_the_upstream() -> None:
    """A UTF-8 address is refused with 553 5.6.7 by an upstream without SMTPUTF8, and sent
    with SMTPUTF8 to one that offers it."""
    rcpts = ["jörg@example.org"]
    async with running() as up:
        refused = await deliver(view(up), rcpts=rcpts)
    assert (refused.failure, refused.code) == ("protocol", 553)
    assert refused.reply.startswith("5.6.7")
    assert up.handler.messages == []
    async with running(enable_SMTPUTF8=True) as up:
        sent = await deliver(view(up), rcpts=rcpts)
    assert codes(sent) == {"jörg@example.org": 250}
    assert "SMTPUTF8" in up.handler.messages[0].mail_options


async def test_mail_over_the_advertised_size_is_refused_at_mail_from() -> None:
    """SIZE lets the upstream refuse an oversized mail at MAIL FROM, with its own code."""
    async with running(data_size_limit=64) as up:
        outcome = await deliver(view(up))
    assert (outcome.failure, outcome.code) == ("protocol", 552)
    assert up.handler.messages == []


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
async def test_tls_with_a_company_ca_delivers(
    mode: str, server_tls: ssl.SSLContext, trusting: settings.DispatcherSettings
) -> None:
    """Implicit TLS and STARTTLS verify the upstream against the CA from tls_ca_file."""
    async with running(tls_context=server_tls, implicit_tls=mode == "ssl") as up:
        outcome = await deliver(view(up, connect=mode), cfg=trusting)
    assert codes(outcome) == {"you@example.org": 250}
    assert up.handler.messages[0].tls


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
async def test_untrusted_certificate_is_a_tls_failure(
    mode: str, server_tls: ssl.SSLContext
) -> None:
    """With the system CAs only, the test CA's certificate is refused: a tls failure."""
    async with running(tls_context=server_tls, implicit_tls=mode == "ssl") as up:
        outcome = await deliver(view(up, connect=mode))
    assert outcome.failure == "tls"
    assert "certificate" in outcome.reply.lower()
    assert up.handler.messages == []


@pytest.mark.parametrize("tls", [True, None])
async def test_kube_mail_tls_server_is_reached_over_implicit_tls(
    tls: bool | None, server_tls: ssl.SSLContext, trusting: settings.DispatcherSettings
) -> None:
    """kube-mail's documented `port: 465, tls: true` (and a server with neither `tls` nor
    `connect`) means implicit TLS: the mail reaches a real smtps upstream over TLS."""
    async with running(tls_context=server_tls, implicit_tls=True) as up:
        spec: dict[str, Any] = {"server": up.host, "port": up.port, "authType": "PLAIN"}
        if tls is not None:
            spec["tls"] = tls
        server = msgspec.convert(
            {"metadata": {"name": "default", "namespace": "default"}, "spec": spec},
            resources.SMTPServer)
        outcome = await deliver(building.upstream_view(server), cfg=trusting, timeout_s=2.0)
    assert codes(outcome) == {"you@example.org": 250}
    assert up.handler.messages[0].tls


async def test_kube_mail_tls_false_server_is_plain() -> None:
    """kube-mail's `tls: false` (its MailHog example) is plain SMTP."""
    async with running() as up:
        server = msgspec.convert(
            {"metadata": {"name": "mailhog"},
             "spec": {"server": up.host, "port": up.port, "tls": False}},
            resources.SMTPServer)
        outcome = await deliver(building.upstream_view(server))
    assert codes(outcome) == {"you@example.org": 250}
    assert not up.handler.messages[0].tls


async def test_verification_can_be_turned_off(server_tls: ssl.SSLContext) -> None:
    """tls_verify=False accepts a certificate nobody vouches for."""
    cfg = settings.DispatcherSettings(tls_verify=False)
    async with running(tls_context=server_tls, implicit_tls=True) as up:
        outcome = await deliver(view(up, connect="ssl"), cfg=cfg)
    assert codes(outcome) == {"you@example.org": 250}


async def test_starttls_mode_refuses_an_upstream_without_starttls(
    trusting: settings.DispatcherSettings,
) -> None:
    """connect=starttls against a server not offering STARTTLS sends nothing: tls."""
    async with running() as up:
        outcome = await deliver(view(up, connect="starttls"), cfg=trusting)
    assert outcome.failure == "tls"
    assert "STARTTLS" in outcome.reply
    assert up.handler.messages == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
@pytest.mark.parametrize("password", ["s3cret-alice", "wrong"])
async def test_auth_mechanisms_log_in_or_fail_with_the_code(
    mechanism: str, password: str
) -> None:
    """Each authType logs in with the right password and is an auth failure (535) with
    a wrong one."""
    handler = upstream_mod.AuthHandler(users=USERS)
    creds = snapshot.Credentials(username="alice", password=password)
    async with running(handler, auth_require_tls=False,
                       authenticator=handler.authenticate) as up:
        outcome = await deliver(view(up, auth_type=mechanism), creds)
    if password == USERS["alice"]:
        assert codes(outcome) == {"you@example.org": 250}
        assert handler.messages[0].login == "alice"
    else:
        assert (outcome.failure, outcome.code) == ("auth", 535)
        assert handler.messages == []


async def test_auth_after_starttls(
    server_tls: ssl.SSLContext, trusting: settings.DispatcherSettings
) -> None:
    """An upstream that offers AUTH only over TLS gets the login after STARTTLS."""
    handler = upstream_mod.AuthHandler(users=USERS)
    creds = snapshot.Credentials(username="alice", password=USERS["alice"])
    async with running(handler, tls_context=server_tls,
                       authenticator=handler.authenticate) as up:
        outcome = await deliver(view(up, connect="starttls", auth_type="LOGIN"), creds,
                                cfg=trusting)
    assert codes(outcome) == {"you@example.org": 250}
    assert (handler.messages[0].login, handler.messages[0].tls) == ("alice", True)


async def test_unknown_auth_type_is_refused_before_connecting() -> None:
    """An authType podpost cannot speak is an auth failure saying so, and no connection is
    made."""
    async with running() as up:
        outcome = await deliver(view(up, auth_type="XOAUTH2"),
                                snapshot.Credentials(username="alice", password="x"))
    assert (outcome.failure, outcome.code) == ("auth", None)
    assert "XOAUTH2 is not supported" in outcome.reply
    assert up.handler.connections == 0


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
async def test_scram_login_reaches_an_upstream_that_speaks_it(mechanism: str) -> None:
    """A SCRAM login (scramp's client against scramp's server side) is accepted and the
    mail arrives under that login."""
    handler = upstream_mod.AuthHandler(users=USERS)
    creds = snapshot.Credentials(username="alice", password=USERS["alice"])
    async with running(handler, auth_require_tls=False,
                       authenticator=handler.authenticate) as up:
        outcome = await deliver(view(up, auth_type=mechanism), creds)
    assert codes(outcome) == {"you@example.org": 250}
    assert handler.messages[0].login == "alice"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
async def test_scram_with_a_wrong_password_is_a_login_failure(mechanism: str) -> None:
    """A SCRAM login with a wrong password is an auth failure with the upstream's 535 and
    no mail arrives."""
    handler = upstream_mod.AuthHandler(users=USERS)
    creds = snapshot.Credentials(username="alice", password="wrong")
    async with running(handler, auth_require_tls=False,
                       authenticator=handler.authenticate) as up:
        outcome = await deliver(view(up, auth_type=mechanism), creds)
    assert (outcome.failure, outcome.code) == ("auth", 535)
    assert handler.messages == []


async def test_each_recipient_keeps_its_own_refusal() -> None:
    """Refused recipients keep their RCPT code; the accepted ones get DATA's reply."""
    rcpts = ["a@example.org", "fail-550@example.org", "fail-451@example.org", "b@example.org"]
    async with running() as up:
        outcome = await deliver(view(up), rcpts=rcpts)
    assert [r.rcpt for r in outcome.rcpts] == rcpts
    assert [r.code for r in outcome.rcpts] == [250, 550, 451, 250]
    assert "refused by test upstream" in outcome.rcpts[1].reply
    assert up.handler.messages[0].rcpt_to == ["a@example.org", "b@example.org"]


@pytest.mark.parametrize("code", [451, 554])
async def test_data_refusal_goes_to_the_accepted_recipients(code: int) -> None:
    """A DATA refusal is the result of every accepted recipient, not of refused ones."""
    rcpts = [f"data-{code}@example.org", "fail-550@example.org"]
    async with running() as up:
        outcome = await deliver(view(up), rcpts=rcpts)
    assert outcome.failure is None
    assert codes(outcome) == {rcpts[0]: code, rcpts[1]: 550}
    assert up.handler.messages == []


async def test_session_stays_usable_after_refusals() -> None:
    """After every recipient or the DATA was refused, RSET keeps the session usable."""
    async with running() as up:
        conn = await sending.connect(view(up), None, tls=ssl.create_default_context(),
                                     timeout_s=5.0, local_hostname="dispatcher.test")
        assert isinstance(conn, sending.Connection)
        try:
            for rcpts in (["fail-550@example.org"], ["data-451@example.org"],
                          ["ok@example.org"]):
                outcome = await sending.send(conn, "app@example.org", rcpts, MAIL,
                                             timeout_s=5.0)
                assert outcome.failure is None
                assert conn.alive
        finally:
            await sending.close(conn)
    assert codes(outcome) == {"ok@example.org": 250}
    assert up.handler.connections == 1
    assert [m.rcpt_to for m in up.handler.messages] == [["ok@example.org"]]


async def test_connection_dropped_at_data_is_a_connect_failure() -> None:
    """An upstream that drops the connection mid-DATA gives a connect failure."""
    async with running() as up:
        outcome = await deliver(view(up), rcpts=["drop@example.org"])
    assert (outcome.failure, outcome.rcpts) == ("connect", [])


async def test_slow_upstream_hits_the_deadline() -> None:
    """A reply slower than the timeout is a timeout failure, well within the test."""
    handler = upstream_mod.Handler(slow_s=3.0)
    async with running(handler) as up:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await deliver(view(up), rcpts=["slow@example.org"], timeout_s=0.3)
        assert loop.time() - started < 2.0
    assert outcome.failure == "timeout"


async def test_closed_port_is_a_connect_failure() -> None:
    """Nobody listening: a connect failure without a code."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    upstream = snapshot.UpstreamView(key="mail/gone", host="127.0.0.1", port=port)
    outcome = await deliver(upstream)
    assert (outcome.failure, outcome.code) == ("connect", None)


async def test_busy_greeting_is_a_connect_failure_with_its_code() -> None:
    """A server greeting with 421 (too busy) gives connect with code 421."""

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 too busy, try later\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(busy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        outcome = await deliver(snapshot.UpstreamView(key="mail/busy", host="127.0.0.1",
                                                      port=port))
    finally:
        server.close()
        await server.wait_closed()
    assert (outcome.failure, outcome.code) == ("connect", 421)
    assert "too busy" in outcome.reply


@pytest.mark.parametrize("data", [
    MAIL + b"line\r\n" * 200,
    MAIL + b".a dot line\r\n..two\r\n",
    b"Subject: lone\n\nLF only\nand a lone\rCR",
])
async def test_data_reaches_the_upstream_as_aiosmtplib_would_send_it(data: bytes) -> None:
    """A message needing no preparation and ones needing it (dot lines, lone LF/CR, no
    final CRLF) arrive as aiosmtplib's own ``data`` delivers them (ours pipelined when the
    upstream offers it and the message needs no preparation)."""
    async with running(check_pipelining=False) as up:
        assert (await deliver(view(up), data=data)).rcpts[0].code == 250
        assert up.handler.pipelined == [PIPELINING[0] and sending.ready_as_is(data)]
        smtp = aiosmtplib.SMTP(hostname=up.host, port=up.port, start_tls=False, timeout=5)
        async with smtp:
            await smtp.mail("app@example.org")
            await smtp.rcpt("you@example.org")
            await smtp.data(data)
        ours, theirs = up.handler.messages
    assert ours.data == theirs.data
