"""A real aiosmtpd upstream on an ephemeral loopback port, whose behaviour the recipient
selects, like httpx's ``/status/<code>`` routes:

- ``fail-451@...`` / ``fail-550@...`` (any ``fail-NNN@``): that recipient is refused with NNN;
- ``data-451@...`` / ``data-554@...``: the recipient is accepted, DATA is answered NNN;
- ``slow@...``: DATA is answered after ``slow_s`` seconds;
- ``drop@...``: the connection is dropped at DATA;
- anything else is accepted and the message kept in ``messages``.

``flaky`` makes the next N deliveries answer 451 at DATA, then recover. A closed ``gate``
(`Handler.close_gate`) holds every DATA reply until it is opened again, so a test can
break something while deliveries are in flight; ``waiting`` counts the held ones.
`ProviderHandler` keeps a quota per window and answers like a provider past it.

The handler counts sessions: ``connections`` opened in all, ``active`` open now and
``max_active`` at most at once. `AuthHandler` adds logins (PLAIN, LOGIN, CRAM-MD5, and
SCRAM-SHA-1 / SCRAM-SHA-256 on `scramp`'s server side) for a table of users;
`Upstream.drop_connections` closes every open session, as an upstream that times idle
clients out does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import scramp
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

_FAIL_RE = re.compile(r"^fail-(\d{3})@")
_DATA_RE = re.compile(r"^data-(\d{3})@")


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    data: bytes
    login: str | None = None
    mail_options: list[str] = field(default_factory=list)
    tls: bool = False


@dataclass
class Handler:
    messages: list[Received] = field(default_factory=list)
    slow_s: float = 2.0
    flaky: int = 0
    connections: int = 0
    active: int = 0
    max_active: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: set[SMTP] = field(default_factory=set)
    """The sessions open now."""
    no_sessions: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no session is open."""
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    """DATA is answered only while this is set (it is, unless `close_gate` was called)."""
    waiting: int = 0
    """DATA replies held by the closed gate now."""
    pipelining: bool = False
    """Advertise PIPELINING (RFC 2920) in the EHLO reply (aiosmtpd reads pipelined
    commands either way)."""
    pipelined: list[bool] = field(default_factory=list)
    """Per MAIL FROM: whether the client had already sent its next command with it."""

    def __post_init__(self) -> None:
        self.no_sessions.set()
        self.gate.set()

    def close_gate(self) -> None:
        self.gate.clear()

    def open_gate(self) -> None:
        self.gate.set()

    def session_opened(self, server: SMTP) -> None:
        self.sessions.add(server)
        self.active = len(self.sessions)
        self.max_active = max(self.max_active, self.active)
        self.no_sessions.clear()

    def session_closed(self, server: SMTP) -> None:
        self.sessions.discard(server)
        self.active = len(self.sessions)
        if not self.sessions:
            self.no_sessions.set()

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        buffered = bytes(getattr(server._reader, "_buffer", b""))  # aiosmtpd's StreamReader
        self.pipelined.append(b"RCPT TO:" in buffered.upper())
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        match = _FAIL_RE.match(address)
        if match:
            code = match.group(1)
            return f"{code} {code[0]}.1.1 refused by test upstream: {address}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rcpts = list(envelope.rcpt_tos)
        for rcpt in rcpts:
            match = _DATA_RE.match(rcpt)
            if match:
                code = match.group(1)
                return f"{code} {code[0]}.0.0 test upstream refuses data"
        if any(r.startswith("drop@") for r in rcpts):
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "421 dropped"
        if any(r.startswith("slow@") for r in rcpts):
            await asyncio.sleep(self.slow_s)
        if not self.gate.is_set():
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        if self.flaky > 0:
            self.flaky -= 1
            return "451 4.3.0 test upstream is flaky, try later"
        data = envelope.original_content or b""
        login = session.login_data.decode() if isinstance(session.login_data, bytes) else (
            session.login_data if isinstance(session.login_data, str) else None)
        self.messages.append(
            Received(mail_from=envelope.mail_from or "", rcpt_to=rcpts, data=data, login=login,
                     mail_options=list(envelope.mail_options),
                     tls=server.transport is not None
                     and server.transport.get_extra_info("sslcontext") is not None)
        )
        self.arrived.set()
        return "250 2.0.0 OK test upstream"

    async def wait_for(self, count: int, timeout_s: float = 20.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived (bounded in time)."""
        async with asyncio.timeout(timeout_s):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


@dataclass
class ProviderHandler(Handler):
    """An upstream that keeps a quota like a provider's free tier: at most ``maximum``
    messages per window of ``period_ms`` (aligned to the epoch, as podpost's scaled
    windows are); past it DATA is answered ``quota_reply`` (Gmail's words by default).
    ``refuse_all`` answers every DATA so, as an account whose quota is already spent.
    ``windows`` counts the accepted messages per window start; ``refused`` the others."""

    maximum: int = 1_000_000
    period_ms: int = 86_400_000
    quota_reply: str = "550 5.4.5 Daily user sending quota exceeded"
    refuse_all: bool = False
    windows: dict[int, int] = field(default_factory=dict)
    refused: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        now_ms = time.time_ns() // 1_000_000
        start = now_ms - now_ms % self.period_ms
        if self.refuse_all or self.windows.get(start, 0) >= self.maximum:
            self.refused += 1
            return self.quota_reply
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            self.windows[start] = self.windows.get(start, 0) + 1
        return reply


@dataclass
class AuthHandler(Handler):
    """A `Handler` that logs users in: pass ``authenticator=handler.authenticate`` to
    `start` (PLAIN and LOGIN); CRAM-MD5 is offered by `auth_CRAM__MD5` itself."""

    users: dict[str, str] = field(default_factory=dict)

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and self.users.get(auth_data.login.decode()) == auth_data.password.decode())
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 2195: the client answers ``user hex(hmac_md5(password, challenge))``."""
        challenge = f"<{secrets.token_hex(8)}@upstream.test>".encode()
        answer = await server.challenge_auth(challenge)
        if not isinstance(answer, bytes):  # challenge_auth has answered already
            return AuthResult(success=False, handled=True)
        if b" " not in answer:
            return AuthResult(success=False, handled=False)
        login, _, digest = answer.partition(b" ")
        password = self.users.get(login.decode())
        expected = (hmac.new(password.encode(), challenge, "md5").hexdigest().encode()
                    if password is not None else b"")
        if password is None or not hmac.compare_digest(digest, expected):
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=LoginPassword(login, b""))

    async def auth_SCRAM__SHA__1(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._scram("SCRAM-SHA-1", server, args)

    async def auth_SCRAM__SHA__256(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._scram("SCRAM-SHA-256", server, args)

    async def _scram(self, name: str, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 5802 as an SMTP server: client-first (the initial response or the answer to
        an empty challenge), server-first, client-final, then the server's signature as a
        last challenge the client answers with an empty line."""
        mechanism = scramp.ScramMechanism(name)
        users = {user: mechanism.make_auth_info(password) for user, password in
                 self.users.items()}
        scram = mechanism.make_server(lambda user: users[user])
        if len(args) > 1:
            try:
                first: object = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                return AuthResult(success=False, handled=False)
        else:
            first = await server.challenge_auth(b"")
        try:
            if not isinstance(first, bytes):
                return AuthResult(success=False, handled=True)
            scram.set_client_first(first.decode())
            final = await server.challenge_auth(scram.get_server_first())
            if not isinstance(final, bytes):
                return AuthResult(success=False, handled=True)
            scram.set_client_final(final.decode())
        except (scramp.ScramException, KeyError, UnicodeDecodeError):
            return AuthResult(success=False, handled=False)
        done = await server.challenge_auth(scram.get_server_final())
        if not isinstance(done, bytes):
            return AuthResult(success=False, handled=True)
        login = _scram_user(first)
        return AuthResult(success=True, auth_data=LoginPassword(login.encode(), b""))


def _scram_user(client_first: bytes) -> str:
    """The ``n=`` attribute of a SCRAM client-first message (``=2C`` is ``,``, ``=3D``
    is ``=``)."""
    for part in client_first.decode().split(","):
        if part.startswith("n="):
            return part[2:].replace("=2C", ",").replace("=3D", "=")
    return ""


class _TrackedSMTP(SMTP):
    """aiosmtpd's SMTP telling the handler when a session opens and closes (once each:
    STARTTLS calls connection_made a second time, on the same session)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.event_handler.session_opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self.event_handler.session_closed(self)


@dataclass
class Upstream:
    host: str
    port: int
    handler: Handler
    server: asyncio.base_events.Server

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def drop_connections(self, *, abort: bool = False) -> int:
        """Close every open session from the upstream's side (``abort``: reset it, which
        also ends a session stuck in a failed TLS handshake); how many."""
        sessions = list(self.handler.sessions)
        for session in sessions:
            for transport in (session.transport, session._original_transport):
                if isinstance(transport, asyncio.Transport):
                    transport.abort() if abort else transport.close()
                    if not abort:
                        break
        return len(sessions)

    async def close(self) -> None:
        """Stop listening and end the sessions still open (3.11's wait_closed does not
        wait for them): reset them and cancel their handlers, bounded in time. Cancelling
        matters for a session whose STARTTLS handshake failed: aiosmtpd never hears that
        it was lost."""
        self.server.close()
        await self.server.wait_closed()
        sessions = list(self.handler.sessions)
        self.drop_connections(abort=True)
        tasks = [s._handler_coroutine for s in sessions if s._handler_coroutine is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        for session in sessions:
            self.handler.session_closed(session)


async def start(
    handler: Handler | None = None, *, tls_context: ssl.SSLContext | None = None,
    implicit_tls: bool = False, port: int = 0, **smtp_kwargs: Any,
) -> Upstream:
    """Start an upstream on 127.0.0.1 (port 0 = free port). ``tls_context`` with
    ``implicit_tls`` wraps the socket (smtps); without, it is offered as STARTTLS."""
    handler = handler or Handler()
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        handler.connections += 1
        return _TrackedSMTP(
            handler,
            hostname="upstream.test",
            tls_context=None if implicit_tls else tls_context,
            require_starttls=bool(tls_context) and not implicit_tls,
            **smtp_kwargs,
        )

    server = await loop.create_server(
        factory, "127.0.0.1", port, ssl=tls_context if implicit_tls else None
    )
    bound = server.sockets[0].getsockname()
    return Upstream(host=bound[0], port=bound[1], handler=handler, server=server)
