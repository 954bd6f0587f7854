"""Abuse of a running relay (real processes, file source): every attempt is refused with
the right code and nothing is relayed; a planted upstream password never shows up in a
log, an event or the snapshot.

The file holds two namespaces: ``shop`` (the Secret with the password, an SMTPServer that
needs it, and a policy admitting only ``app@shop.test`` for 127.0.0.1) and ``rogue``
(a policy for 127.0.0.3 that points at shop's Secret without the grant annotation).
127.0.0.9 is no pod at all. The one legitimate mail proves the password does work.
Shop's ``remote`` policy also takes a client login (``clientCredentials``, a second
planted password) from anywhere: a wrong password is refused, the right one admits 127.0.0.9.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from pathlib import Path

import aiosmtplib
import nats
import nats.js.errors

from loadkit import relay
from loadkit import upstream as upstream_mod
from podpost import natsserver
from schemas import events, names, snapshot

PASSWORD = "PLANTED-pw-5f3a9c1e"
USER = "relay-user"
CLIENT_PASSWORD = "PLANTED-client-pw-0d4e"
WRONG_PASSWORD = "PLANTED-wrong-pw-a1b2"
CLIENT_USER = "shop-client"
GOOD = b"From: app@shop.test\r\nTo: you@example.org\r\nSubject: legit\r\n\r\nhello\r\n"
REMOTE = GOOD.replace(b"legit", b"logged in")

POLICY = """\
apiVersion: podpost/v1alpha1
kind: StaticSource
metadata: {{name: shop-app, namespace: shop, labels: {{app: shop}}}}
spec: {{cidrs: [127.0.0.1/32]}}
---
apiVersion: podpost/v1alpha1
kind: StaticSource
metadata: {{name: rogue-app, namespace: rogue, labels: {{app: rogue}}}}
spec: {{cidrs: [127.0.0.3/32]}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: SMTPServer
metadata: {{name: upstream, namespace: shop}}
spec: {{server: 127.0.0.1, port: {port}, connect: plain, authType: PLAIN}}
---
apiVersion: v1
kind: Secret
metadata: {{name: login, namespace: shop}}
stringData: {{username: {user}, password: {password}}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {{name: mailer, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: shop}}}}
  allowedSenders: [app@shop.test]
  sink: {{smtp: {{server: {{name: upstream}}, credentials: {{name: login}}}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: client-login, namespace: shop}}
stringData: {{username: {client_user}, password: {client_password}}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {{name: remote, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: nobody}}}}
  clientCredentials: [{{name: client-login}}]
  allowPlaintextAuth: true
  sink: {{smtp: {{server: {{name: upstream}}, credentials: {{name: login}}}}}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: SMTPServer
metadata: {{name: upstream, namespace: rogue}}
spec: {{server: 127.0.0.1, port: {port}, connect: plain, authType: PLAIN}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {{name: thief, namespace: rogue}}
spec:
  podSelector: {{matchLabels: {{app: rogue}}}}
  sink: {{smtp: {{server: {{name: upstream}}, credentials: {{name: login, namespace: shop}}}}}}
"""


def _forms(secret: str) -> list[bytes]:
    """The password as it could leak: plain, base64, and inside an AUTH PLAIN blob."""
    raw = secret.encode()
    return [raw, base64.b64encode(raw),
            base64.b64encode(b"\0" + USER.encode() + b"\0" + raw)]


def _leaks(blob: bytes) -> bool:
    return any(form in blob for form in _forms(PASSWORD))


def _client_leaks(blob: bytes) -> bool:
    """A client login's password (right or wrong), in any form; it is stored nowhere."""
    return any(form in blob for secret in (CLIENT_PASSWORD, WRONG_PASSWORD)
               for form in [*_forms(secret), base64.b64encode(
                   b"\0" + CLIENT_USER.encode() + b"\0" + secret.encode())])


async def _login_and_send(port: int, source: str, password: str) -> tuple[int, str]:
    """AUTH PLAIN as the client login, then one mail: the reply that ended it."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, source_address=(source, 0),
                             local_hostname="client.test", start_tls=False, timeout=10)
    async with client:
        try:
            await client.ehlo()
            await client.auth_plain(CLIENT_USER, password)
            _, message = await client.sendmail("app@shop.test", ["you@example.org"], REMOTE)
        except aiosmtplib.SMTPResponseException as exc:
            return exc.code, exc.message
    return 250, message


async def _send(port: int, source: str, sender: str, data: bytes) -> tuple[int, str]:
    """One transaction: (code, message) of the reply that ended it."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, source_address=(source, 0),
                             local_hostname="client.test", start_tls=False, timeout=10)
    try:
        await client.connect()
    except aiosmtplib.SMTPConnectError as exc:
        return 0, str(exc)
    async with client:
        try:
            _, message = await client.sendmail(sender, ["you@example.org"], data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return exc.recipients[0].code, exc.recipients[0].message
        except aiosmtplib.SMTPResponseException as exc:
            return exc.code, exc.message
    return 250, message


async def _stream_messages(js: nats.js.JetStreamContext, stream: str) -> list[bytes]:
    """Every stored message (headers and data) of a small stream."""
    info = await js.stream_info(stream)
    out: list[bytes] = []
    if not info.state.messages:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            msg = await js.get_msg(stream, seq)
            out.append(repr(msg.headers).encode() + b"\n" + (msg.data or b""))
    return out


async def test_abuse_is_refused_and_the_planted_password_never_leaks(
    tmp_path: Path, nats_server: natsserver.NatsServer
) -> None:
    """A client no policy admits, a sender outside allowedSenders, a spoofed From: and a
    policy using another namespace's Secret without the grant are each refused with
    550 5.7.1 (and a Rejected event with that code); only the legitimate mail is ever
    stored or relayed, logged in with the planted password; that password appears in no
    process log (debug level), no event, no snapshot revision and no other stream, only
    in the credentials bucket."""
    handler = upstream_mod.AuthHandler(users={USER: PASSWORD})
    up = await upstream_mod.start(handler, auth_require_tls=False,
                                  authenticator=handler.authenticate)
    policy = POLICY.format(port=up.port, user=USER, password=PASSWORD,
                           client_user=CLIENT_USER, client_password=CLIENT_PASSWORD)
    bus_names = names.Bus()
    try:
        async with relay.running(tmp_path / "relay", nats_server.url, up, dispatchers=1,
                                 policy=policy, PODPOST_LOG__LEVEL="debug",
                                 PODPOST_INGRESS__AUTH_FAILURE_DELAY_S="0.05") as running:
            async with asyncio.timeout(40):  # until the snapshot is loaded and the mail queued
                while (reply := await _send(running.port, "127.0.0.1", "app@shop.test",
                                            GOOD))[0] != 250:
                    assert reply[0] in (0, 451), reply
                    await asyncio.sleep(0.3)

            no_pod = await _send(running.port, "127.0.0.9", "app@shop.test", GOOD)
            wrong_sender = await _send(running.port, "127.0.0.1", "ceo@shop.test",
                                       GOOD.replace(b"app@shop.test", b"ceo@shop.test"))
            spoofed = await _send(running.port, "127.0.0.1", "app@shop.test",
                                  GOOD.replace(b"From: app@shop.test", b"From: ceo@shop.test"))
            cross_ns = await _send(running.port, "127.0.0.3", "app@rogue.test", GOOD)
            assert no_pod == (550, "5.7.1 No policy admits client 127.0.0.9")
            assert wrong_sender == (
                550, "5.7.1 Sender <ceo@shop.test> is not allowed for this client")
            assert spoofed == (
                550, "5.7.1 From: address <ceo@shop.test> is not allowed for this client")
            assert cross_ns == (550, "5.7.1 No policy admits client 127.0.0.3")

            [delivered] = await handler.wait_for(1, timeout_s=30)
            assert delivered.login == USER and delivered.data.endswith(GOOD)
            wrong_login = await _login_and_send(running.port, "127.0.0.9", WRONG_PASSWORD)
            assert wrong_login[0] == 535, wrong_login
            remote = await _login_and_send(running.port, "127.0.0.9", CLIENT_PASSWORD)
            assert remote[0] == 250, remote
            await handler.wait_for(2, timeout_s=30)

            nc = await nats.connect(nats_server.url)
            try:
                js = nc.jetstream(timeout=5)
                for _ in range(300):  # until the one mail was acked (30 s)
                    if not (await js.stream_info(bus_names.mail_stream)).state.messages:
                        break
                    await asyncio.sleep(0.1)
                mail_state = (await js.stream_info(bus_names.mail_stream)).state
                rejected = [e for e in (events.event_decoder.decode(m.split(b"\n", 1)[1])
                                        for m in await _stream_messages(
                                            js, bus_names.events_stream))
                            if isinstance(e, events.Rejected)]
                streams = {str(info.config.name): await _stream_messages(
                    js, str(info.config.name)) for info in await js.streams_info()}
            finally:
                await nc.close()
            assert len(handler.messages) == 2  # the legitimate mail and the logged-in one
        logs = {name: role.log() for name, role in running.roles.items()}
        crashed = [name for name, role in running.roles.items()
                   if role.proc is not None and role.proc.returncode not in (0, None)]
    finally:
        await up.close()

    assert crashed == []
    assert mail_state.last_seq == 2  # nothing but the two legitimate mails was ever stored
    assert {(e.client_ip, e.code) for e in rejected if e.code == 451} <= {("127.0.0.1", 451)}
    assert sorted((e.client_ip, e.code, e.stage) for e in rejected if e.code != 451) == [
        ("127.0.0.1", 550, "data"), ("127.0.0.1", 550, "mail"),
        ("127.0.0.3", 550, "mail"), ("127.0.0.9", 550, "mail")]
    assert "CrossNamespaceSecretNotGranted" in logs["reconciler"]
    assert "ingress.login_failed" in logs["ingress"] and CLIENT_USER in logs["ingress"]
    for name, text in logs.items():
        assert not _client_leaks(text.encode()), f"client password in the {name} log"
    for stream, messages in streams.items():
        assert not any(_client_leaks(m) for m in messages), f"client password in {stream}"

    # the search works: the password is where it belongs, and only there
    credentials = names.kv_stream(bus_names.credentials_bucket)
    assert any(_leaks(m) for m in streams.pop(credentials))
    for name, text in logs.items():
        assert len(text) > 1000, name  # debug logs were written
        assert not _leaks(text.encode()), f"password in the {name} log"
    for stream, messages in streams.items():
        assert not any(_leaks(m) for m in messages), f"password in stream {stream}"
    policy_kv = streams[names.kv_stream(bus_names.policy_bucket)]
    assert policy_kv
    for value in policy_kv:
        body = value.split(b"\n", 1)[1]
        if body:  # a delete marker has none
            assert not _leaks(snapshot.snapshot_json(body))

