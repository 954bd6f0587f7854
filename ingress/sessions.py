"""The live SMTP sessions of one listener: counted, capped and drained.

On Python 3.11 ``Server.wait_closed()`` does not wait for open connections, so the ingress
keeps its own set of live sessions: beyond ``max_sessions`` a new connection gets ``421``
and is closed. On stop, idle sessions get ``421`` at once, sessions inside a transaction
may finish it (they get ``421`` right after its reply) within the grace period, and the
rest are closed; then the ingress waits for aiosmtpd's per-session tasks to end, so none
is left behind.

The registry knows a session only as a `Session` (idle or not, closable with a reply); the
aiosmtpd protocol that is one lives in `ingress.protocol`, so the two do not import each
other.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

import structlog

from ingress.rules import replies

log = structlog.get_logger("ingress.sessions")

TASK_WAIT_S = 2.0
"""After closing a connection, how long its session task may take to notice."""


class Session(Protocol):
    """What the registry needs of a session (`ingress.protocol.IngressSMTP` is one)."""

    @property
    def idle(self) -> bool:
        """Not inside a transaction."""
        ...

    def close_with(self, reply: str) -> None:
        """Send ``reply`` and close the connection (nothing when already closing)."""
        ...


class Sessions:
    """The live sessions of one listener."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.draining = False
        self._live: set[Session] = set()
        self._ending: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._live)

    def accepts(self) -> bool:
        return not self.draining and len(self._live) < self.max_sessions

    def add(self, session: Session) -> None:
        self._live.add(session)

    def discard(self, session: Session, task: asyncio.Task[Any] | None) -> None:
        self._live.discard(session)
        if task is not None and not task.done():
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
        self._changed.set()

    async def drain(self, grace_s: float) -> None:
        """Let transactions finish within ``grace_s``, then close what is left."""
        self.draining = True
        for session in list(self._live):
            if session.idle:
                session.close_with(replies.SHUTTING_DOWN)
        try:
            async with asyncio.timeout(grace_s):
                while self._live:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            log.warning("ingress.sessions_cut", sessions=len(self._live))
        for session in list(self._live):
            session.close_with(replies.SHUTTING_DOWN)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TASK_WAIT_S):
                while self._live:  # close() reports connection_lost on the next loop turns
                    self._changed.clear()
                    await self._changed.wait()
        tasks = set(self._ending)
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_WAIT_S)


class Refuser(asyncio.Protocol):
    """Says ``421`` to a connection beyond the cap, then closes it."""

    def __init__(self, reply: str) -> None:
        self._reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        log.warning("ingress.session_refused", peer=str(transport.get_extra_info("peername")),
                    reply=self._reply)
        transport.write(self._reply.encode("ascii") + b"\r\n")
        transport.close()
