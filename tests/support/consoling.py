"""The relay with its web console, in the test's loop: a policy snapshot with two catcher
inboxes (namespaces ``team-a`` and ``team-b``) and one real upstream, the real ingress, a
dispatcher and the console on free loopback ports; and the mail to send through it.

``127.0.0.1`` is the pod ``team-a/web-1`` (policy ``team-a/catch``), ``127.0.0.3`` the
pod ``team-b/api-1`` (``team-b/catch``); both go to the catcher. The upstream
``mail/relay`` is a real aiosmtpd server that a caught mail can be released to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage

from console import main as console_main
from loadkit import inprocess
from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import mail, names, snapshot
from tests.support import dispatching

TOKEN = "s3cret-console-token"
UPSTREAM = "mail/relay"
TEAM_A = snapshot.PolicyView(key="team-a/catch", upstream=names.CATCHER)
TEAM_B = snapshot.PolicyView(key="team-b/catch", upstream=names.CATCHER)
SCRIPT_MARK = "script-ran"
"""What a script in the test mail would write into the page, if it ever ran."""


@dataclass
class Relay:
    console_url: str
    ingress: inprocess.Ingress
    conn: bus.Conn

    async def send(self, message: EmailMessage, *, source: str = "127.0.0.1") -> str:
        """Send over SMTP; the mail id from ``250 2.0.0 queued as <id>``."""
        async with self.ingress.client(source=source) as client:
            _, reply = await client.send_message(message)
        return reply.rsplit(" ", 1)[-1]


def html_mail(subject: str, *, to: str = "someone@example.org",
              image_url: str = "http://127.0.0.1:9/pixel.gif") -> EmailMessage:
    """A mail with a text part, an HTML part carrying a script and a remote image, and a
    PDF-ish attachment."""
    msg = EmailMessage()
    msg["From"] = "App <app@example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hello in plain text.\n")
    msg.add_alternative(
        "<html><body><h1 id='greeting'>Hello in HTML</h1>"
        f"<script>document.body.setAttribute('data-mark','{SCRIPT_MARK}');"
        f"parent.document.title='{SCRIPT_MARK}';</script>"
        f"<img src='{image_url}' alt='tracker'>"
        "<p onclick=\"alert(1)\">&lt;b&gt;escaped&lt;/b&gt;</p></body></html>",
        subtype="html")
    msg.add_attachment(b"%PDF-1.4 test attachment\n", maintype="application",
                       subtype="pdf", filename="report.pdf")
    return msg


async def dead_letter(conn: bus.Conn, rcpt: str) -> int:
    """A dead letter for the real upstream, as the dispatcher stores one: its DEAD seq."""
    policy = dispatching.policy_view("team-a/relay", UPSTREAM)
    body = (b"From: app@example.com\r\nTo: " + rcpt.encode() + b"\r\nSubject: dead one\r\n"
            b"Message-ID: <dead@example.com>\r\n\r\ncome back\r\n")
    env = dispatching.envelope(policy, [rcpt], body=body)
    letter = mail.DeadLetter(envelope=env, fate="permanent", code=550, reply="5.1.1 no",
                             dead_at=datetime.now(UTC))
    ack = await conn.js.publish(conn.names.dead_subject(UPSTREAM),
                                mail.envelope_encoder.encode(letter))
    return ack.seq


@contextlib.asynccontextmanager
async def running(nats: settings.NatsSettings, conn: bus.Conn,
                  upstream: upstream_mod.Upstream) -> AsyncIterator[Relay]:
    """Everything up, stopped and awaited on exit (bounded)."""
    relay_policy = dispatching.policy_view("team-a/relay", UPSTREAM)
    snap = snapshot.PolicySnapshot(
        generated_at=datetime.now(UTC),
        policies={p.key: p for p in (TEAM_A, TEAM_B, relay_policy)},
        upstreams={UPSTREAM: dispatching.upstream_view(UPSTREAM, upstream)},
        routes=[snapshot.Route(network="127.0.0.1/32", policy=TEAM_A.key,
                               source="pod:team-a/web-1"),
                snapshot.Route(network="127.0.0.3/32", policy=TEAM_B.key,
                               source="pod:team-b/api-1")],
        source="test")
    await inprocess.put_snapshot(conn, snap)
    base = dispatching.config(nats)
    cfg = settings.Settings(
        nats=nats, ingress=inprocess.make_settings(nats).ingress, dispatcher=base.dispatcher,
        console=settings.ConsoleSettings(host="127.0.0.1", port=0, token=TOKEN),
        grace_s=2.0)
    stop = asyncio.Event()
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    console = asyncio.create_task(console_main.serve(cfg, stop, listening=bound.set_result))
    try:
        async with inprocess.running(cfg) as ingress, dispatching.dispatcher(cfg):
            async with asyncio.timeout(15):
                done, _ = await asyncio.wait({console, bound},
                                             return_when=asyncio.FIRST_COMPLETED)
            if console in done:
                console.result()
                raise AssertionError("the console returned before listening")
            yield Relay(console_url=bound.result(), ingress=ingress, conn=conn)
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await console

