"""Reading a PROXY protocol header off a new connection, before the banner.

A connection from a trusted network (``ingress.proxy_protocol_cidrs``) starts with the
balancer's header; the session reads it (`read`), judged by `rules.proxyheader`, within
``proxy_timeout_s`` and in at most a few reads, and only then greets the client. A
connection whose header is missing, broken or late is closed without a word, as the
protocol's specification asks.
"""

from __future__ import annotations

import asyncio

from ingress.rules import proxyheader

MAX_READS = 4
"""A v2 header takes three reads (prefix, fixed part, addresses), a v1 line two."""


async def read(reader: asyncio.StreamReader, timeout_s: float
               ) -> proxyheader.Header | proxyheader.Invalid:
    """The header at the start of the stream, having read exactly its bytes."""
    data = b""
    try:
        async with asyncio.timeout(timeout_s):
            for _ in range(MAX_READS):
                verdict = proxyheader.parse(data)
                if not isinstance(verdict, proxyheader.Incomplete):
                    return verdict
                if verdict.need:
                    data += await reader.readexactly(verdict.need)
                else:
                    data += await reader.readuntil(b"\n")
    except TimeoutError:
        return proxyheader.Invalid(reason="no PROXY header in time")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return proxyheader.Invalid(reason="connection ended inside the PROXY header")
    verdict = proxyheader.parse(data)
    if isinstance(verdict, proxyheader.Incomplete):
        return proxyheader.Invalid(reason="PROXY header incomplete")
    return verdict
