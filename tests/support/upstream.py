"""A real aiosmtpd upstream on an ephemeral loopback port, whose behaviour the recipient
selects, like httpx's ``/status/<code>`` routes:

- ``fail-451@...`` / ``fail-550@...`` (any ``fail-NNN@``): that recipient is refused with NNN;
- ``data-451@...`` / ``data-554@...``: the recipient is accepted, DATA is answered NNN;
- ``slow@...``: DATA is answered after ``slow_s`` seconds;
- ``drop@...``: the connection is dropped at DATA;
- anything else is accepted and the message kept in ``messages``.

``flaky`` makes the next N deliveries answer 451 at DATA, then recover.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

_FAIL_RE = re.compile(r"^fail-(\d{3})@")
_DATA_RE = re.compile(r"^data-(\d{3})@")


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    data: bytes
    login: str | None = None


@dataclass
class Handler:
    messages: list[Received] = field(default_factory=list)
    slow_s: float = 2.0
    flaky: int = 0
    connections: int = 0
    active: int = 0
    max_active: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

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
            assert server.transport is not None
            server.transport.abort()
            return "421 dropped"
        if any(r.startswith("slow@") for r in rcpts):
            await asyncio.sleep(self.slow_s)
        if self.flaky > 0:
            self.flaky -= 1
            return "451 4.3.0 test upstream is flaky, try later"
        data = envelope.original_content or b""
        login = session.login_data.decode() if isinstance(session.login_data, bytes) else (
            session.login_data if isinstance(session.login_data, str) else None)
        self.messages.append(
            Received(mail_from=envelope.mail_from or "", rcpt_to=rcpts, data=data, login=login)
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
class Upstream:
    host: str
    port: int
    handler: Handler
    server: asyncio.base_events.Server

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


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
        return SMTP(
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
