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
from ingress import listening as listening_mod
from ingress import protocol, tlsconfig
from ingress import sessions as sessions_mod
from ingress.rules import replies, routing
from runtime import bus, health, heap, policies
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


def _log_bound(servers: list[asyncio.Server], hostname: str, tls: str) -> None:
    for server in servers:
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("ingress.listening", host=host, port=port, hostname=hostname, tls=tls)


def _settle_heap(icfg: settings_mod.IngressSettings) -> None:
    """Collect once, then freeze what survived (``ingress.gc_freeze``): the ingress's
    full collections then walk only what its sessions made, not the whole program."""
    heap.settle(freeze=icfg.gc_freeze, threshold0=icfg.gc_threshold0)


async def listen(
    cfg: settings_mod.Settings,
    conn: bus.Conn,
    holder: policies.SnapshotHolder,
    stop: asyncio.Event,
    *,
    hostname: str,
    listening: Callable[[str, int], None] | None = None,
) -> None:
    """Serve SMTP until ``stop``, then drain within ``cfg.grace_s``: on every address of
    ``ingress.host``, with STARTTLS (and the implicit-TLS port) when a certificate is set."""
    icfg = cfg.ingress
    loop = asyncio.get_running_loop()
    handler = handler_mod.Handler(conn, icfg, holder, hostname)
    sessions = sessions_mod.Sessions(icfg.max_sessions)
    tls = tlsconfig.load(icfg.tls_cert_file, icfg.tls_key_file)
    if tls is None and icfg.tls_port:
        raise tlsconfig.TLSError("PODPOST_INGRESS__TLS_PORT needs a certificate "
                                 "(PODPOST_INGRESS__TLS_CERT_FILE and _KEY_FILE)")

    def factory() -> asyncio.Protocol:
        if not sessions.accepts():
            reply = (replies.SHUTTING_DOWN if sessions.draining
                     else replies.TOO_MANY_SESSIONS)
            return sessions_mod.Refuser(reply)
        session = protocol.IngressSMTP(
            handler, sessions,
            hostname=hostname, ident=IDENT, data_size_limit=icfg.max_message_size,
            enable_SMTPUTF8=True, decode_data=False, timeout=icfg.idle_timeout_s, loop=loop,
            tls_context=tls.front if tls is not None else None,
            auth_require_tls=False,  # the handler decides what is offered when
        )
        sessions.add(session)
        return session

    addresses = listening_mod.hosts(icfg.host)
    servers = await listening_mod.bind(factory, addresses, icfg.port,
                                       backlog=icfg.listen_backlog)
    _log_bound(servers, hostname, "starttls" if tls is not None else "none")
    if tls is not None and icfg.tls_port:
        implicit = await listening_mod.bind(factory, addresses, icfg.tls_port, tls=tls.front,
                                            backlog=icfg.listen_backlog)
        _log_bound(implicit, hostname, "implicit")
        servers += implicit
    _settle_heap(icfg)
    host, port = servers[0].sockets[0].getsockname()[:2]
    if listening is not None:
        listening(host, port)
    try:
        async with asyncio.TaskGroup() as tg:
            if tls is not None:
                tg.create_task(tls.watch(stop, icfg.tls_reload_s), name="ingress.tls")
            await stop.wait()
    finally:
        for server in servers:
            server.close()
        await sessions.drain(cfg.grace_s)
        for server in servers:
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
        holder = policies.SnapshotHolder(role="ingress", routes=routing.Table())
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
