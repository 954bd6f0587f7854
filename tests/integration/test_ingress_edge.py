"""The ingress's edge with real clients: STARTTLS and AUTH (Python's smtplib, swaks), a
policy's client login, TLS-only policies, the implicit-TLS port and a renewed
certificate, PROXY protocol headers, and an IPv6 client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import msgspec
import pytest
import structlog
import trustme

from ingress.rules import headers
from loadkit import inprocess
from loadkit import upstream as upstream_mod
from loadkit.inprocess import OPEN
from runtime import bus, settings
from schemas import snapshot
from tests.support import dispatching
from tests.support import ingress as support
from tests.unit.test_proxyheader import v1, v2

MESSAGE = b"From: App <app@example.com>\r\nTo: a@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
PASSWORD = "PLANTED-client-pw-7c1d"
REMOTE = snapshot.PolicyView(key="apps/remote", upstream="mail/relay")
TLS_ONLY = snapshot.PolicyView(key="apps/tls-only", upstream="mail/relay", require_tls=True)


def client_login(policy: str, username: str, password: str) -> snapshot.ClientLogin:
    salt = snapshot.login_salt(policy, username)
    return snapshot.ClientLogin(policy=policy, salt=salt, iterations=snapshot.LOGIN_ITERATIONS,
                                verifier=snapshot.login_verifier(
                                    password, salt, snapshot.LOGIN_ITERATIONS))


SNAPSHOT = msgspec.structs.replace(
    inprocess.SNAPSHOT,
    policies={**inprocess.SNAPSHOT.policies, REMOTE.key: REMOTE, TLS_ONLY.key: TLS_ONLY},
    routes=[*inprocess.SNAPSHOT.routes,
            snapshot.Route(network="127.0.0.3/32", policy=TLS_ONLY.key, source="pod:apps/tls-1"),
            snapshot.Route(network="::1/128", policy=OPEN.key, source="pod:apps/app-6")],
    logins={"shop": client_login(REMOTE.key, "shop", PASSWORD)},
)


@dataclass
class Certs:
    ca: trustme.CA
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def issue(self, common_name: str) -> None:
        """Write a new certificate and key over the files (as a renewal does)."""
        cert = self.ca.issue_cert("127.0.0.1", "localhost", common_name=common_name)
        cert.private_key_pem.write_to_path(str(self.key_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    found = Certs(ca=trustme.CA(), cert_file=tmp_path / "tls.crt",
                  key_file=tmp_path / "tls.key")
    found.issue("first")
    return found


@pytest.fixture
def tls_settings(certs: Certs) -> dict[str, Any]:
    return {"tls_cert_file": str(certs.cert_file), "tls_key_file": str(certs.key_file)}


@pytest.fixture
async def start(conn: bus.Conn, nats_settings: settings.NatsSettings
                ) -> AsyncIterator[Any]:
    """Start an ingress with these ingress settings on the edge snapshot."""
    await inprocess.put_snapshot(conn, SNAPSHOT)
    async with contextlib.AsyncExitStack() as stack:
        async def starter(**options: Any) -> inprocess.Ingress:
            return await stack.enter_async_context(
                inprocess.running(inprocess.make_settings(nats_settings, **options)))
        yield starter


def smtplib_send(port: int, context: ssl.SSLContext, user: str, password: str,
                 source: str = "127.0.0.1") -> tuple[bool, dict[str, Any]]:
    """A blocking smtplib client: whether EHLO offered AUTH before TLS, then STARTTLS,
    login, one mail; the refused recipients (none)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10,
                      source_address=(source, 0)) as client:
        client.ehlo()
        before = client.has_extn("auth")
        client.starttls(context=context)
        client.ehlo()
        client.login(user, password)
        refused = client.sendmail("app@example.com", ["a@example.net"], MESSAGE)
    return before, refused


async def test_smtplib_starttls_and_any_login_keep_the_pod_identity(
    start: Any, tls_settings: dict[str, Any], certs: Certs, conn: bus.Conn
) -> None:
    """With accept-any, smtplib's starttls() + login() with made-up credentials is queued,
    and the mail is still the pod's (identified by its address); AUTH is not offered
    before TLS."""
    ingress = await start(auth_accept_any=True, **tls_settings)
    before, refused = await asyncio.to_thread(
        smtplib_send, ingress.port, certs.client_context(), "anything", "at-all")
    assert (before, refused) == (False, {})
    [(_, envelope)] = await support.stored(conn)
    assert (envelope.policy, envelope.source) == (OPEN.key, "pod:apps/app-1")
    assert envelope.body is not None and b"with ESMTPS id" in envelope.body


async def test_swaks_with_tls_and_auth(
    start: Any, tls_settings: dict[str, Any], conn: bus.Conn
) -> None:
    """swaks --tls --auth (LOGIN, then PLAIN) against the ingress: both mails queued."""
    swaks = shutil.which("swaks")
    if swaks is None:
        if os.environ.get("CI") == "true":
            pytest.fail("swaks is not installed (.ci/run installs it)")
        pytest.skip("swaks is not installed (apt-get install swaks)")
    ingress = await start(auth_accept_any=True, **tls_settings)
    for mechanism in ("LOGIN", "PLAIN"):
        proc = await asyncio.create_subprocess_exec(
            swaks, "--server", "127.0.0.1", "--port", str(ingress.port), "--tls",
            "--auth", mechanism, "--auth-user", "app", "--auth-password", "x",
            "--from", "app@example.com", "--to", "a@example.net", "--helo", "swaks.test",
            "--timeout", "10", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        assert b"250 2.0.0 queued as" in out
    assert len(await support.stored(conn)) == 2


async def test_a_client_login_admits_a_client_no_pod_address_identifies(
    start: Any, tls_settings: dict[str, Any], certs: Certs, conn: bus.Conn
) -> None:
    """From an address no route knows, the policy's client login over TLS admits the
    mail to that policy (source ``login:<user>``)."""
    ingress = await start(**tls_settings)
    _, refused = await asyncio.to_thread(
        smtplib_send, ingress.port, certs.client_context(), "shop", PASSWORD, "127.0.0.9")
    assert refused == {}
    [(_, envelope)] = await support.stored(conn)
    assert (envelope.policy, envelope.source, envelope.client_ip) == (
        REMOTE.key, "login:shop", "127.0.0.9")


async def test_failed_logins_are_slowed_down_and_logged_without_the_password(
    start: Any, tls_settings: dict[str, Any], certs: Certs
) -> None:
    """Wrong passwords get 535, each logged as ingress.login_failed with a doubled delay
    (smtplib's login() tries PLAIN, then LOGIN: two failures per call); neither the wrong
    nor the right password appears in any log line."""
    ingress = await start(auth_failure_delay_s=0.05, **tls_settings)
    wrong = "PLANTED-wrong-pw-93ab"
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                await asyncio.to_thread(smtplib_send, ingress.port, certs.client_context(),
                                        "shop", wrong, "127.0.0.9")
            assert refused.value.smtp_code == 535
    failed = [e for e in logs if e["event"] == "ingress.login_failed"]
    assert [(e["username"], e["client_ip"], e["failures"], e["delay_s"]) for e in failed] == [
        ("shop", "127.0.0.9", n, 0.05 * 2 ** (n - 1)) for n in (1, 2, 3, 4)]
    text = repr(logs)
    for secret in (wrong, PASSWORD):
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode() not in text


async def test_a_tls_only_policy_refuses_mail_without_starttls(
    start: Any, tls_settings: dict[str, Any], certs: Certs
) -> None:
    """A policy with requireTLS answers MAIL with 530 over plain SMTP and queues the same
    mail after STARTTLS."""
    ingress = await start(**tls_settings)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await support.send(ingress, "app@example.com", ["a@example.net"], MESSAGE,
                           source="127.0.0.3")
    assert refused.value.code == 530
    client = ingress.client("127.0.0.3", tls_context=certs.client_context())
    async with client:
        await client.starttls()
        _, reply = await client.sendmail("app@example.com", ["a@example.net"], MESSAGE)
    assert reply.startswith("2.0.0 queued as")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def served_name(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        banner = tls.recv(1024)
        assert banner.startswith(b"220 ")
        cert: Any = tls.getpeercert()
        tls.sendall(b"QUIT\r\n")
    return str(dict(x[0] for x in cert["subject"])["commonName"])


async def test_implicit_tls_port_serves_a_renewed_certificate(
    start: Any, tls_settings: dict[str, Any], certs: Certs
) -> None:
    """The implicit-TLS port greets inside TLS; after the certificate files are replaced,
    new handshakes get the new certificate without a restart."""
    port = free_port()
    await start(tls_port=port, tls_reload_s=0.05, **tls_settings)
    context = certs.client_context()
    assert await asyncio.to_thread(served_name, port, context) == "first"
    certs.issue("second")
    names = []
    for _ in range(200):  # bounded: the reload checks every 50 ms
        names.append(await asyncio.to_thread(served_name, port, context))
        if names[-1] == "second":
            break
        await asyncio.sleep(0.05)
    assert names[-1] == "second"


async def raw_transaction(raw: support.Raw) -> bytes:
    assert (await raw.command(b"EHLO proxied.test")).startswith(b"250")
    assert (await raw.command(b"MAIL FROM:<app@example.com>")).startswith(b"250")
    assert (await raw.command(b"RCPT TO:<a@example.net>")).startswith(b"250")
    assert (await raw.command(b"DATA")).startswith(b"354")
    return await raw.command(MESSAGE + b".")


@pytest.mark.parametrize("version", [1, 2])
async def test_a_proxy_header_from_a_trusted_balancer_names_the_client(
    start: Any, conn: bus.Conn, version: int
) -> None:
    """From a trusted network, the PROXY header's source address is the client: a v1 or
    v2 header for 127.0.3.7 gets that static network's policy."""
    ingress = await start(proxy_protocol_cidrs=["127.0.0.1/32"])
    reader, writer = await asyncio.open_connection(ingress.host, ingress.port,
                                                   local_addr=("127.0.0.1", 0))
    writer.write(v1("127.0.3.7", 40000) if version == 1 else v2("127.0.3.7", 40000))
    raw = support.Raw(reader, writer)
    assert (await raw.reply()).startswith(b"220 ")
    assert (await raw_transaction(raw)).startswith(b"250 2.0.0 queued as")
    await raw.close()
    [(_, envelope)] = await support.stored(conn)
    assert (envelope.client_ip, envelope.source) == ("127.0.3.7", "static:apps/lab")


async def test_a_proxy_header_from_anyone_else_is_not_believed(
    start: Any, conn: bus.Conn
) -> None:
    """From outside the trusted networks the connection is greeted at once and a PROXY
    line is an unknown command: the mail is the client's own address's."""
    ingress = await start(proxy_protocol_cidrs=["127.0.0.1/32"])
    raw = await support.Raw.connect(ingress, "127.0.0.2")
    assert (await raw.command(v1("127.0.3.7", 1).rstrip())).startswith(b"500")
    assert (await raw_transaction(raw)).startswith(b"250 2.0.0 queued as")
    await raw.close()
    [(_, envelope)] = await support.stored(conn)
    assert (envelope.client_ip, envelope.source) == ("127.0.0.2", "pod:apps/strict-1")


async def test_a_trusted_peer_without_a_header_is_dropped_ungreeted(start: Any) -> None:
    """A connection from a trusted network that starts with anything but a PROXY header
    is closed without a greeting."""
    ingress = await start(proxy_protocol_cidrs=["127.0.0.1/32"])
    reader, writer = await asyncio.open_connection(ingress.host, ingress.port,
                                                   local_addr=("127.0.0.1", 0))
    writer.write(b"EHLO no-header.test\r\n")
    async with asyncio.timeout(10):
        data = await reader.read()
    writer.close()
    assert data == b""


async def test_an_ipv6_client_on_the_loopback(start: Any, conn: bus.Conn) -> None:
    """Listening on 127.0.0.1 and ::1, a client on ::1 is served on the same port and
    identified by its IPv6 address."""
    ingress = await start(host="127.0.0.1,::1")
    client = aiosmtplib.SMTP(hostname="::1", port=ingress.port, local_hostname="v6.test",
                             start_tls=False, timeout=10)
    async with client:
        _, reply = await client.sendmail("app@example.com", ["a@example.net"], MESSAGE)
    assert reply.startswith("2.0.0 queued as")
    [(_, envelope)] = await support.stored(conn)
    assert (envelope.client_ip, envelope.source) == ("::1", "pod:apps/app-6")



async def test_a_rewritten_sender_arrives_upstream_with_the_original_in_reply_to(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """Through ingress, bus and dispatcher: a policy with rewriteSender delivers with the
    verified address as envelope sender and From:, and the app's From: in Reply-To:."""
    verified = "noreply@verified.example"
    policy = dispatching.policy_view("apps/rewrite", "mail/relay", rewrite_sender=verified)
    snap = msgspec.structs.replace(
        SNAPSHOT, policies={**SNAPSHOT.policies, policy.key: policy},
        upstreams={"mail/relay": dispatching.upstream_view("mail/relay", upstream)},
        routes=[snapshot.Route(network="127.0.0.4/32", policy=policy.key,
                               source="pod:apps/rewrite-1")])
    await inprocess.put_snapshot(conn, snap)
    async with inprocess.running(inprocess.make_settings(nats_settings)) as ingress, \
            dispatching.dispatcher(dispatching.config(nats_settings)):
        await support.send(ingress, "bounces@app.example", ["a@example.net"], MESSAGE,
                           source="127.0.0.4")
        [got] = await upstream.handler.wait_for(1)
    assert got.mail_from == verified
    fields = dict(headers.fields(got.data))
    assert fields["from"] == f"App <{verified}>".encode()
    assert fields["reply-to"] == b"App <app@example.com>"
