"""End-to-end throughput: N messages of a given size over S parallel SMTP sessions through
ingress -> JetStream -> dispatcher(s) -> a counting sink, each a real process.

Prints accepted msgs/s, delivered msgs/s, p50/p99 accept latency and each process's peak
RSS. Example (the issue's figure)::

    .venv/bin/python bench/throughput.py --messages 5000 --size 10240 --sessions 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadkit import relay  # noqa: E402
from podpost import natsserver  # noqa: E402

# The same relay policy the load kit's scenarios run (a static source for 127.0.0.0/8, one
# plain SMTPServer for the sink with a connection cap, one policy).
PODPOST = relay.PODPOST
POLICY = relay.POLICY


def message(i: int, size: int) -> bytes:
    head = (
        f"From: bench@example.com\r\nTo: sink@example.com\r\nSubject: bench {i}\r\n"
        f"Message-ID: <bench-{i}-{time.time_ns()}@example.com>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def peak_rss_mib(pid: int) -> float:
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_s(pid: int) -> float:
    """User+system CPU seconds a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RawClient:
    """An SMTP client on asyncio streams, one command at a time like an app's (no
    pipelining), so the load generator, which is not podpost, costs the shared CPU
    little; ``--aiosmtplib`` uses aiosmtplib instead."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        await self._reply()
        await self._command(b"EHLO bench.local\r\n")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def _reply(self) -> bytes:
        while True:
            line = await self.reader.readline()
            if not line:
                raise aiosmtplib.SMTPServerDisconnected("closed")
            if line[3:4] != b"-":
                return line

    async def _command(self, data: bytes, ok: bytes = b"2") -> bytes:
        self.writer.write(data)
        reply = await self._reply()
        if not reply.startswith(ok):
            raise aiosmtplib.SMTPResponseException(int(reply[:3]), reply.decode().strip())
        return reply

    async def sendmail(self, sender: str, rcpts: list[str], body: bytes) -> None:
        await self._command(f"MAIL FROM:<{sender}>\r\n".encode())
        for rcpt in rcpts:
            await self._command(f"RCPT TO:<{rcpt}>\r\n".encode())
        await self._command(b"DATA\r\n", ok=b"3")
        stuffed = body.replace(b"\r\n.", b"\r\n..")
        end = b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n"
        await self._command(stuffed + end)


PROFILE: set[str] = set()
"""Roles to run under cProfile (``--profile ROLE``), writing ``<role>.prof`` here."""


async def spawn(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    if args[1] in PROFILE:
        args = (sys.executable, "-m", "cProfile", "-o", f"{args[1]}.prof", *args)
    return await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


async def wait_ready(port: int, timeout_s: float = 30.0) -> None:
    """Until the ingress answers 250 for a probe (snapshot loaded, broker up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5) as smtp:
                await smtp.sendmail("probe@example.com", ["sink@example.com"], message(-1, 100))
                return
        except (aiosmtplib.SMTPException, OSError):
            await asyncio.sleep(0.3)
    raise SystemExit("ingress did not become ready")


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="podpost-bench-"))
    sink = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "sink.py"),
        *(["--aiosmtpd"] if args.aiosmtpd else []), stdout=asyncio.subprocess.PIPE
    )
    assert sink.stdout is not None
    sink_port = int((await sink.stdout.readline()).split()[1])
    delivered = 0
    delivered_at = time.monotonic()
    progress = asyncio.Event()

    async def delivered_at_least(count: int) -> None:
        while delivered < count:
            progress.clear()
            await progress.wait()

    async def follow_sink() -> None:
        nonlocal delivered, delivered_at
        assert sink.stdout is not None
        while line := await sink.stdout.readline():
            _, count, at = line.split()
            delivered, delivered_at = int(count), float(at)
            progress.set()

    procs: dict[str, asyncio.subprocess.Process] = {"sink": sink}
    server = natsserver.NatsServer(store_dir=tmp / "nats")
    await server.start()
    policies = tmp / "policies.yaml"
    policies.write_text(POLICY.format(port=sink_port, conns=args.connections))
    env = dict(os.environ, PODPOST_NATS_URL=server.url, PODPOST_LOG__LEVEL="warning",
               PODPOST_LOG__FORMAT="json")
    smtp_port = 20000 + os.getpid() % 20000
    follower = asyncio.create_task(follow_sink())
    try:
        procs["reconciler"] = await spawn(PODPOST, "reconciler", "--policies", str(policies),
                                          env=env)
        procs["ingress"] = await spawn(PODPOST, "ingress", "--host", "127.0.0.1",
                                       "--port", str(smtp_port), env=env)
        for i in range(args.dispatchers):
            procs[f"dispatcher-{i}"] = await spawn(PODPOST, "dispatcher", env=env)
        await wait_ready(smtp_port)
        async with asyncio.timeout(60):
            await delivered_at_least(1)
        base = delivered

        latencies: list[float] = []
        per_session = [args.messages // args.sessions] * args.sessions
        for i in range(args.messages % args.sessions):
            per_session[i] += 1
        errors = 0

        async def session(index: int, count: int) -> None:
            nonlocal errors
            client: RawClient | aiosmtplib.SMTP = (
                aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_port, timeout=60)
                if args.aiosmtplib else RawClient(smtp_port))
            async with client as smtp:
                for n in range(count):
                    body = message(index * 1_000_000 + n, args.size)
                    began = time.perf_counter()
                    try:
                        await smtp.sendmail("bench@example.com", ["sink@example.com"], body)
                    except aiosmtplib.SMTPException:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - began)

        started = time.monotonic()
        pids = {name: p.pid for name, p in procs.items()}
        if server.proc:
            pids["nats-server"] = server.proc.pid
        cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
        client_before = sum(os.times()[:2])
        async with asyncio.TaskGroup() as tg:
            for index, count in enumerate(per_session):
                tg.create_task(session(index, count))
        accepted_s = time.monotonic() - started
        async with asyncio.timeout(args.timeout):
            await delivered_at_least(base + len(latencies))
        delivered_s = delivered_at - started
        cpu = {name: cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
        cpu["client (this script)"] = sum(os.times()[:2]) - client_before

        latencies.sort()
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
        print(f"messages={args.messages} size={args.size}B sessions={args.sessions} "
              f"dispatchers={args.dispatchers} errors={errors} "
              f"client={'aiosmtplib' if args.aiosmtplib else 'raw'} "
              f"sink={'aiosmtpd' if args.aiosmtpd else 'raw'}")
        print(f"accepted:  {len(latencies) / accepted_s:8.1f} msgs/s "
              f"({len(latencies)} in {accepted_s:.2f} s)")
        print(f"delivered: {(delivered - base) / delivered_s:8.1f} msgs/s "
              f"({delivered - base} in {delivered_s:.2f} s)")
        print(f"accept latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        rss = ", ".join(f"{name} {peak_rss_mib(p.pid):.0f}" for name, p in procs.items())
        print(f"peak RSS MiB: {rss}, nats-server "
              f"{peak_rss_mib(server.proc.pid) if server.proc else float('nan'):.0f}")
        print("CPU s during the run: " + ", ".join(f"{n} {c:.1f}" for n, c in cpu.items()))
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.terminate()  # a clean stop, so a profiled role writes its profile
        for proc in procs.values():
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        follower.cancel()
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=20,
                        help="maxConnections of the sink upstream")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--aiosmtplib", action="store_true",
                        help="load with aiosmtplib instead of the light raw client")
    parser.add_argument("--aiosmtpd", action="store_true",
                        help="an aiosmtpd sink instead of the light raw one")
    parser.add_argument("--profile", action="append", default=[],
                        help="run this role (ingress, dispatcher) under cProfile")
    args = parser.parse_args()
    PROFILE.update(args.profile)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
