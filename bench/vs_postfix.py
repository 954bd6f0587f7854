"""podpost against Postfix on this machine: the same client, the same sink, interleaved runs.

Both relays get mail from Postfix's own load generator, ``smtp-source``, with the same
command line (``-N``: a new recipient per mail, so no two mails are one to podpost's
content-derived dedupe) and hand it to Postfix's ``smtp-sink``; a run lasts from the first
connection until the sink has counted every mail (end to end). Runs alternate A, B, A, B
(this machine's speed drifts over minutes) for each mode (a new connection per mail, or
``-d``: one connection per session), session count and size. Postfix is Debian's
``postfix`` package (installed when missing, as root), run as a private loopback instance
from a temporary directory: its own config and queue, ``inet_interfaces = 127.0.0.1``, a
free port, ``relayhost`` = the sink, no local delivery, otherwise its defaults. podpost is
its three processes and a nats-server, the sink as its one upstream (20 connections, as
Postfix's default destination concurrency).

Printed: msgs/s and the ratio to Postfix per cell; CPU seconds per 1,000 mails and peak RSS
per process (Postfix's per program, summed over its processes); and p50/p99 accept latency
(connect to the ``250`` after DATA) of a paced client (`bench/paced.c`, compiled with
``cc``), a new connection per mail, one command at a time, at half the maximum rate
measured for that size; the sink must then receive every mail it was answered 250 for.
Example (the README's table)::

    .venv/bin/python bench/vs_postfix.py --sizes 10240 --sessions 10 50 --modes new
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import procstat  # noqa: E402
from loadkit import relay  # noqa: E402
from podpost import natsserver  # noqa: E402

SENDER = "bench@example.com"
RCPT = "sink@example.com"
CONNECTIONS = 20
"""Sessions to the sink: Postfix's default_destination_concurrency_limit, podpost's
maxConnections."""


def ensure_postfix() -> None:
    if shutil.which("smtp-source") and shutil.which("postfix"):
        return
    if os.geteuid() != 0:
        raise SystemExit("vs_postfix: smtp-source not found; install Debian's postfix (root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], env=env, check=True,
                   stdout=subprocess.DEVNULL)


MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.invalid
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery
relayhost = [127.0.0.1]:{sink}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
maillog_file_prefixes = {dir}
maillog_file = {dir}/maillog
smtp_tls_security_level = none
smtpd_tls_security_level = none
syslog_name = postfix-bench
"""


class Postfix:
    """A private Postfix instance in ``dir`` listening on ``port``, relaying to ``sink``."""

    def __init__(self, dir: Path, port: int, sink: int) -> None:
        self.dir, self.port = dir, port
        etc = dir / "etc"
        for sub in ("etc", "queue", "data"):
            (dir / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(dir / "data", "postfix")
        (etc / "main.cf").write_text(MAIN_CF.format(dir=dir, sink=sink))
        rows = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if line[:1].isalpha() and len(fields) >= 8:
                if fields[1] == "inet":
                    continue  # the system's port 25 and any other listener
                fields[4] = "n"  # no chroot: the instance has no chroot tree
                line = " ".join(fields)
            rows.append(line)
        rows.insert(0, f"127.0.0.1:{port} inet n - n - - smtpd")
        (etc / "master.cf").write_text("\n".join(rows) + "\n")

    def _postfix(self, command: str) -> None:
        # postfix reports only to syslog unless stderr is a terminal: script(1) gives it one
        done = subprocess.run(
            ["script", "-qc", f"postfix -c {self.dir / 'etc'} {command}", "/dev/null"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SystemExit(f"vs_postfix: postfix {command} failed: {done.stdout.strip()}")

    def start(self) -> None:
        self._postfix("start")

    def stop(self) -> None:
        self._postfix("stop")

    def pids(self) -> dict[str, list[int]]:
        """The instance's processes by program name: master and its children."""
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        master = int(pid_file.read_text().split()[0])
        groups = procstat.children(master)
        groups.setdefault("master", []).insert(0, master)
        return groups


class Sink:
    """``smtp-sink -c``: prints ``... mesg=N`` after each mail; counted here."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self._progress = asyncio.Event()

    async def start(self) -> None:
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        self.proc = await asyncio.create_subprocess_exec(
            "smtp-sink", *user, "-c", f"127.0.0.1:{self.port}", "1024",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        self._reader = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.readuntil(b"\r"):
            _, _, count = chunk.rstrip(b"\r").rpartition(b"mesg=")
            self.count = int(count)
            self._progress.set()

    async def reach(self, count: int, timeout_s: float) -> float:
        """Wait until the sink counted ``count`` mails; the monotonic time it did."""
        async with asyncio.timeout(timeout_s):
            while self.count < count:
                self._progress.clear()
                await self._progress.wait()
        return time.monotonic()

    async def stop(self) -> None:
        self._reader.cancel()
        await natsserver.terminate(self.proc, 5.0)


class Podpost:
    """A nats-server and podpost's reconciler, ingress and dispatcher."""

    def __init__(self, dir: Path, sink: int, env: dict[str, str]) -> None:
        self.dir, self.sink, self.extra = dir, sink, env
        self.port = relay.free_port()

    async def start(self) -> None:
        self.nats = natsserver.NatsServer(store_dir=self.dir / "nats")
        await self.nats.start()
        policies = self.dir / "policies.yaml"
        policies.write_text(relay.POLICY.format(port=self.sink, conns=CONNECTIONS))
        env = relay.environment(self.nats.url, PODPOST_INGRESS__HOSTNAME="podpost.bench",
                                **self.extra)
        self.roles = [
            relay.Role("reconciler", ["reconciler", "--source", "file", "--policies",
                                      str(policies)], env, self.dir / "reconciler.log"),
            relay.Role("ingress", ["ingress", "--host", "127.0.0.1", "--port",
                                   str(self.port)], env, self.dir / "ingress.log"),
            relay.Role("dispatcher", ["dispatcher"], env, self.dir / "dispatcher.log"),
        ]
        for role in self.roles:
            await role.start()

    def pids(self) -> dict[str, list[int]]:
        groups = {role.name: [role.proc.pid] for role in self.roles if role.proc}
        if self.nats.proc is not None:
            groups["nats-server"] = [self.nats.proc.pid]
        return groups

    async def stop(self) -> None:
        await asyncio.gather(*(role.stop() for role in self.roles))
        await self.nats.stop()


async def smtp_source(port: int, *, sessions: int, messages: int, size: int,
                      keep: bool) -> None:
    args = ["-N", "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", SENDER, "-t", RCPT, *(["-d"] if keep else []), f"127.0.0.1:{port}"]
    proc = await asyncio.create_subprocess_exec(
        "smtp-source", *args, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"vs_postfix: smtp-source failed: {err.decode().strip()}")


Target = Postfix | Podpost


async def run_once(target: Target, sink: Sink, *, sessions: int, messages: int, size: int,
                   keep: bool, timeout_s: float) -> procstat.Run:
    """One end-to-end run: smtp-source against ``target`` until the sink has it all."""
    await asyncio.sleep(1.0)  # let the last run's stragglers (QUITs, cache closes) settle
    base = sink.count
    watch = procstat.Watch(target.pids)
    started = time.monotonic()
    sampler = asyncio.create_task(watch.sample_until_cancelled())
    try:
        await smtp_source(target.port, sessions=sessions, messages=messages, size=size,
                          keep=keep)
        accepted = time.monotonic()
        ended = await sink.reach(base + messages, timeout_s)
    finally:
        sampler.cancel()
    return watch.finish(messages, ended - started, accepted - started)


PACED_C = Path(__file__).with_name("paced.c")


def build_paced(dir: Path) -> Path:
    """Compile the paced client (`bench/paced.c`) into ``dir``: a C client, so no
    event loop of its own adds its delays to the relay's latency."""
    binary = dir / "paced"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("vs_postfix: a C compiler (cc) is needed for the paced client")
    subprocess.run([compiler, "-O2", "-o", str(binary), str(PACED_C)], check=True)
    return binary


async def paced(binary: Path, port: int, rate: float, duration_s: float, size: int
                ) -> list[list[float]]:
    """Per mail of a client opening a new connection per mail at ``rate``, one command at
    a time (`bench/paced.c`): its accept latency and the six steps it took (ms)."""
    proc = await asyncio.create_subprocess_exec(
        str(binary), str(port), str(rate), str(duration_s), str(size),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"vs_postfix: the paced client failed: {err.decode().strip()}")
    if err:
        print(f"  paced client: {err.decode().strip()}", flush=True)
    return [[float(value) for value in line.split()] for line in out.splitlines()]


async def ready(podpost: Podpost, sink: Sink, timeout_s: float = 60.0) -> None:
    """Until podpost answered 250 for a probe and the sink received it."""
    base = sink.count
    async with asyncio.timeout(timeout_s):
        for index in range(10_000):
            client = await relay.Client.open(podpost.port)
            if client is not None:
                try:
                    if await client.send(relay.message("probe", index)) == 250:
                        break
                finally:
                    await client.close()
            await asyncio.sleep(0.3)
    await sink.reach(base + 1, timeout_s)


def describe() -> str:
    """The commit measured (``-dirty`` with uncommitted changes)."""
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                          capture_output=True, text=True)
    return done.stdout.strip()


async def main(args: argparse.Namespace) -> None:
    ensure_postfix()
    tmp = Path(tempfile.mkdtemp(prefix="podpost-vs-postfix-"))
    os.chmod(tmp, 0o755)
    sink = Sink(relay.free_port())
    await sink.start()
    postfix = Postfix(tmp / "postfix", relay.free_port(), sink.port)
    extra = dict(item.split("=", 1) for item in args.env)
    podpost = Podpost(tmp / "podpost", sink.port, extra)
    targets: dict[str, Target] = {
        name: target for name, target in (("postfix", postfix), ("podpost", podpost))
        if name in args.relays}
    client = build_paced(tmp)
    postfix.start()
    await podpost.start()
    try:
        await ready(podpost, sink)
        commit = await asyncio.to_thread(describe)
        print(f"# podpost {commit} vs Postfix {procstat.postfix_version()}, {os.cpu_count()} "
              f"cores, {args.messages} mails per run, {args.rounds} interleaved rounds"
              + (f", env {' '.join(args.env)}" if args.env else ""), flush=True)
        results: dict[tuple[str, int, int, str], list[procstat.Run]] = {}
        for mode in args.modes if args.latency_rate is None else []:
            for size in args.sizes:
                for sessions in args.sessions:
                    for _ in range(args.rounds):
                        for name, target in targets.items():
                            run = await run_once(
                                target, sink, sessions=sessions, messages=args.messages,
                                size=size, keep=mode == "keep", timeout_s=args.timeout)
                            results.setdefault((mode, size, sessions, name), []).append(run)
                            print(f"  {mode:4} {size // 1024:3} KiB {sessions:3} sessions "
                                  f"{name:8} {run.rate:7.1f} msgs/s end to end, accepted "
                                  f"in {run.accepted_s:.2f} s", flush=True)
        latency: dict[tuple[int, str], procstat.Paced] = {}
        if args.latency_s > 0:
            for size in args.sizes:
                for name, target in targets.items():
                    # the paced client opens a connection per mail: half of that maximum
                    cells = [runs for (mode, s, _, n), runs in results.items()
                             if s == size and n == name and mode == "new"] or [
                             runs for (_, s, _, n), runs in results.items()
                             if s == size and n == name]
                    best = (2 * args.latency_rate if args.latency_rate is not None
                            else max(statistics.mean(r.rate for r in runs) for runs in cells))
                    await asyncio.sleep(1.0)
                    base = sink.count
                    watch = procstat.Watch(target.pids)
                    busy = procstat.Busy()
                    rows = await paced(client, target.port, best / 2, args.latency_s, size)
                    await sink.reach(base + len(rows), args.timeout)
                    cpu = watch.finish(len(rows), 0.0, 0.0).cpu
                    latency[(size, name)] = procstat.Paced(best / 2, rows, cpu, busy.since())
        procstat.report(results, latency)
    finally:
        await podpost.stop()
        postfix.stop()
        await sink.stop()
        if not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="mails per run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 10240, 102400])
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--modes", nargs="+", choices=["new", "keep"], default=["new", "keep"],
                        help="new: a connection per mail; keep: smtp-source -d")
    parser.add_argument("--rounds", type=int, default=2, help="A,B pairs per cell")
    parser.add_argument("--latency-s", type=float, default=10.0,
                        help="length of the paced-client run per size and relay (0: none)")
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="(for profiling) no throughput runs: pace the client at this")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    parser.add_argument("--env", action="append", default=[],
                        help="PODPOST_X=value for podpost's processes (repeatable)")
    parser.add_argument("--relays", nargs="+", choices=["postfix", "podpost"],
                        default=["postfix", "podpost"], help="(for profiling) run only these")
    parser.add_argument("--keep-dir", action="store_true", help="keep logs and config")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
