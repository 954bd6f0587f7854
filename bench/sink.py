"""A counting SMTP sink for benchmarks: accepts everything, keeps nothing.

Runs as its own process so its CPU does not skew the client's timings. Prints
``listening <port>`` once, then ``count <n> <monotonic>`` every 0.2 s.
"""

from __future__ import annotations

import asyncio
import sys
import time

from aiosmtpd.smtp import SMTP, Envelope, Session


class Counter:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        return "250 2.0.0 OK"


async def main() -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(counter, hostname="sink", data_size_limit=None), "127.0.0.1", 0
    )
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    last = -1
    while True:  # ended by the benchmark killing the process
        await asyncio.sleep(0.2)
        if counter.count != last:
            last = counter.count
            print("count", last, time.monotonic(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
