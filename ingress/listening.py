"""The ingress's listening sockets: every configured address, IPv4 and IPv6, one port each.

``ingress.host`` is a comma-separated list (``0.0.0.0,::`` by default). asyncio marks an
IPv6 socket ``IPV6_V6ONLY``, so ``::`` alone would not take IPv4 clients; a socket per
address does, on every kernel. A pod without IPv6 cannot bind ``::``: that address is
skipped with a warning as long as another one binds. With port 0 (tests) the first socket
picks the port and the others take the same one.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable

import structlog

log = structlog.get_logger("ingress.listening")

_MISSING_FAMILY = {errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT}
"""What binding an address of a family the machine lacks raises."""


def hosts(text: str) -> list[str]:
    """The addresses of ``ingress.host``, in order, without blanks and repeats."""
    out: list[str] = []
    for part in text.split(","):
        host = part.strip()
        if host and host not in out:
            out.append(host)
    return out


async def bind(
    factory: Callable[[], asyncio.Protocol], addresses: list[str], port: int,
    *, tls: ssl.SSLContext | None = None, backlog: int = 100,
) -> list[asyncio.Server]:
    """One server per address on ``port`` (the first one's, when 0); raises what the
    first address that fails for another reason than a missing family raises, or the
    last error when none binds."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    missing: OSError | None = None
    try:
        for host in addresses:
            try:
                server = await loop.create_server(factory, host, port, ssl=tls,
                                                  backlog=backlog)
            except OSError as exc:
                # ``::`` without IPv6 may fail to resolve (gaierror) rather than to bind.
                if exc.errno not in _MISSING_FAMILY and not isinstance(exc, socket.gaierror):
                    raise
                log.warning("ingress.address_skipped", host=host, port=port, error=str(exc))
                missing = exc
                continue
            servers.append(server)
            if port == 0:
                port = server.sockets[0].getsockname()[1]
    except BaseException:
        for server in servers:
            server.close()
        raise
    if not servers:
        assert missing is not None or not addresses
        raise missing or OSError(f"no address to listen on: {addresses!r}")
    return servers

