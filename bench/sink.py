"""A counting SMTP sink for benchmarks: accepts everything, keeps nothing.

Runs as its own process so its CPU does not skew the client's timings. Prints
``listening <port>`` once, then ``count <n> <monotonic>`` every 0.2 s.

The default is a minimal SMTP server on asyncio streams (EHLO/HELO, MAIL, RCPT, DATA,
RSET, NOOP, QUIT; no checks), so the upstream, which is not podpost, costs the shared
CPU as little as a real provider's would; ``--aiosmtpd`` uses aiosmtpd instead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

from aiosmtpd.smtp import SMTP, Envelope, Session


class Counter:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        return "250 2.0.0 OK"


def raw_session(
    counter: Counter,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                 b"250 SIZE 104857600\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go on\r\n")
                    await reader.readuntil(b"\r\n.\r\n")
                    counter.count += 1
                    writer.write(b"250 2.0.0 OK\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return serve


async def main(use_aiosmtpd: bool) -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    if use_aiosmtpd:
        server = await loop.create_server(
            lambda: SMTP(counter, hostname="sink", data_size_limit=None), "127.0.0.1", 0)
    else:
        server = await asyncio.start_server(raw_session(counter), "127.0.0.1", 0,
                                            limit=64 * 1024 * 1024)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    last = -1
    while True:  # ended by the benchmark killing the process
        await asyncio.sleep(0.2)
        if counter.count != last:
            last = counter.count
            print("count", last, time.monotonic(), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aiosmtpd", action="store_true")
    asyncio.run(main(parser.parse_args().aiosmtpd))
    sys.exit(0)
