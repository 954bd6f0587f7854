"""Talk to a podpost health server like kubelet and Prometheus do: one GET per connection,
and the ``/metrics`` text parsed into ``{series: value}`` (`runtime.metrics.samples`)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from runtime import metrics


async def get(port: int, path: str, *, method: str = "GET", host: str = "127.0.0.1",
              timeout_s: float = 5.0) -> tuple[int, str]:
    """Status and body of one request; (0, why) when nothing answers."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
                await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return 0, repr(exc)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body.decode()


async def scrape(port: int) -> dict[str, float]:
    status, body = await get(port, "/metrics")
    assert status == 200, body
    return metrics.samples(body)


async def until(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 15.0,
                every_s: float = 0.05) -> None:
    """Poll ``check`` until it holds, bounded in time."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(every_s)


async def status_is(port: int, path: str, expected: int) -> bool:
    status, _ = await get(port, path, timeout_s=2.0)
    return status == expected
