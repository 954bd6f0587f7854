"""The ingress role: an SMTP listener that admits, names and persists mail.

Wiring only: connect to the bus, keep the policy snapshot current, listen, and on stop
close the listener, drain the sessions within ``grace_s`` and return.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import structlog

from ingress import handler as handler_mod
from ingress import protocol
from ingress import sessions as sessions_mod
from ingress.rules import replies
from runtime import bus, health, policies
from runtime import settings as settings_mod

log = structlog.get_logger("ingress.main")

FIRST_SNAPSHOT_S = 2.0
"""How long to try loading the snapshot before listening, so the first clients of a fresh
ingress are not all answered 451; without one it listens anyway."""

IDENT = "ESMTP podpost"


async def _first_snapshot(holder: policies.SnapshotHolder, conn: bus.Conn) -> None:
    with contextlib.suppress(*bus.TRANSIENT):
        async with asyncio.timeout(FIRST_SNAPSHOT_S):
            await holder.refresh(conn)


async def listen(
    cfg: settings_mod.Settings,
    conn: bus.Conn,
    holder: policies.SnapshotHolder,
    stop: asyncio.Event,
    *,
    hostname: str,
    listening: Callable[[str, int], None] | None = None,
) -> None:
    """Serve SMTP until ``stop``, then drain within ``cfg.grace_s``."""
    icfg = cfg.ingress
    loop = asyncio.get_running_loop()
    handler = handler_mod.Handler(conn, icfg, holder, hostname)
    sessions = sessions_mod.Sessions(icfg.max_sessions)

    def factory() -> asyncio.Protocol:
        if not sessions.accepts():
            reply = (replies.SHUTTING_DOWN if sessions.draining
                     else replies.TOO_MANY_SESSIONS)
            return sessions_mod.Refuser(reply)
        session = protocol.IngressSMTP(
            handler, sessions,
            hostname=hostname, ident=IDENT, data_size_limit=icfg.max_message_size,
            enable_SMTPUTF8=True, decode_data=False, timeout=icfg.idle_timeout_s, loop=loop,
        )
        sessions.add(session)
        return session

    server = await loop.create_server(factory, icfg.host, icfg.port)
    host, port = server.sockets[0].getsockname()[:2]
    log.info("ingress.listening", host=host, port=port, hostname=hostname)
    if listening is not None:
        listening(host, port)
    try:
        await stop.wait()
    finally:
        server.close()
        await sessions.drain(cfg.grace_s)
        await server.wait_closed()
        log.info("ingress.stopped")


async def serve(
    cfg: settings_mod.Settings,
    stop: asyncio.Event,
    *,
    listening: Callable[[str, int], None] | None = None,
) -> None:
    """Run the ingress until ``stop`` is set. ``listening(host, port)`` is called once the
    socket is bound (port 0 picks a free one)."""
    hostname = cfg.ingress.hostname or await asyncio.to_thread(socket.getfqdn)
    async with bus.connect(cfg.nats, "ingress") as conn:
        holder = policies.SnapshotHolder(role="ingress")
        await _first_snapshot(holder, conn)
        bound = asyncio.Event()

        def on_listening(host: str, port: int) -> None:
            bound.set()
            if listening is not None:
                listening(host, port)

        with health.readiness.registered(
            "ingress", lambda: None if bound.is_set() else "not listening yet",
            health.connected(conn.nc), health.loaded(holder),
        ):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(holder.run(conn, stop), name="ingress.snapshot")
                await listen(cfg, conn, holder, stop, hostname=hostname,
                             listening=on_listening)
