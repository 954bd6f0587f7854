"""A whole relay of real ``podpost`` processes on loopback, a load that counts every mail by
a token, and the figures of a run: for the crash tests and ``bench/resilience.py``.

- `Role` is one ``podpost ingress|dispatcher|reconciler`` process, its JSON log appended
  to a file, that can be SIGKILLed and started again with the same arguments.
- `Load` sends ``count`` messages over ``sessions`` parallel raw SMTP sessions, several
  messages per session with MAIL/RCPT/DATA pipelined. A message refused (451, 421) or cut
  (connection lost, reset, timeout) is sent again, byte for byte, until it is answered
  ``250`` or the deadline passes: the content-derived mail id makes the retry a duplicate
  JetStream drops. Each message carries ``Subject: <tag>-<index>``.
- `count_tokens` reads those tokens back from what the upstream received, and `Figures`
  compares: lost = answered 250 but never delivered; duplicated = deliveries beyond the
  first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors

from loadkit import upstream as upstream_mod
from podpost import natsserver
from schemas import names

PODPOST = str(Path(sys.executable).parent / "podpost")
SENDER = "load@example.com"
RCPT = "sink@example.com"

POLICY = """\
apiVersion: podpost/v1alpha1
kind: StaticSource
metadata: {{name: load, namespace: apps, labels: {{app: load}}}}
spec: {{cidrs: ["127.0.0.0/8"]}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: SMTPServer
metadata: {{name: sink, namespace: apps}}
spec: {{server: 127.0.0.1, port: {port}, connect: plain, maxConnections: {conns}}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {{name: relay, namespace: apps}}
spec:
  podSelector: {{matchLabels: {{app: load}}}}
  sink: {{smtp: {{server: {{name: sink}}}}}}
  retry: {{minDelay: 1s, maxDelay: 2s, maxQueueAge: 1h}}
"""

MAX_CONNECTIONS = 10
"""The sink's maxConnections: the most messages one dispatcher holds at once, so the most
a SIGKILLed dispatcher can have delivered without acking (possible duplicates)."""


def free_port() -> int:
    """A port that was free a moment ago (for a process that must keep it on restart)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mib(pid: int | None) -> float:
    """The peak resident set (VmHWM) of a live process, in MiB; nan when gone."""
    if pid is None:
        return float("nan")
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_mib(pid: int | str = "self") -> float:
    """The current resident set (VmRSS) in MiB."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return float("nan")


def message(tag: str, index: int, padding: int = 0) -> bytes:
    token = f"{tag}-{index}"
    return (
        f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: {token}\r\n"
        f"Message-ID: <{token}@load.test>\r\n\r\nbody of {token}\r\n"
    ).encode() + (b"x" * 76 + b"\r\n") * (padding // 78)


_SUBJECT_RE = re.compile(rb"\r\nSubject: ([\w.-]+)\r\n")


def count_tokens(messages: Iterable[upstream_mod.Received], tag: str) -> collections.Counter[int]:
    """How often each message index of ``tag`` reached the upstream."""
    counts: collections.Counter[int] = collections.Counter()
    prefix = tag + "-"
    for received in messages:
        match = _SUBJECT_RE.search(b"\r\n" + received.data)
        if match:
            token = match.group(1).decode()
            if token.startswith(prefix) and token[len(prefix):].isdigit():
                counts[int(token[len(prefix):])] += 1
    return counts


# -- processes ---------------------------------------------------------------------------


@dataclass
class Role:
    """One podpost process; its JSON log is appended to ``log_path``."""

    name: str
    args: Sequence[str]
    env: dict[str, str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    killed: int = 0
    started: int = 0

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230 - a local file, opened once
            self.proc = await asyncio.create_subprocess_exec(
                PODPOST, *self.args, env=self.env, stdout=log, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL)
        self.started += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def freeze(self) -> None:
        """SIGSTOP: the process holds what it holds and says nothing (a long pause)."""
        assert self.proc is not None and self.proc.returncode is None, f"{self.name} not running"
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after `freeze`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        assert self.proc is not None and self.proc.returncode is None, f"{self.name} not running"
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.killed += 1

    async def stop(self, grace_s: float = 8.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; the exit code (None if it was killed)."""
        if self.proc is None:
            return None
        return await natsserver.terminate(self.proc, grace_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def _delivered_total(port: int) -> float:
    """``podpost_dispatcher_delivered_total`` summed over its labels, from /metrics."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            text = (await reader.read()).decode(errors="replace")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("podpost_dispatcher_delivered_total{"))


def environment(nats_url: str, **extra: str) -> dict[str, str]:
    """The parent's environment without any PODPOST_* variable, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODPOST_")}
    env.update(PODPOST_NATS_URL=nats_url, PODPOST_LOG__FORMAT="json",
               PODPOST_LOG__LEVEL="warning", PODPOST_GRACE_S="2",
               PODPOST_DISPATCHER__DISCOVERY_INTERVAL_S="0.5",
               PODPOST_INGRESS__PUBLISH_TIMEOUT_S="3",
               PODPOST_INGRESS__HOST="127.0.0.1", PODPOST_INGRESS__HOSTNAME="mx.relay.test")
    env.update(extra)
    return env


@dataclass
class Relay:
    """Reconciler, ingress and dispatchers of one installation, and their upstream."""

    dir: Path
    nats_url: str
    upstream: upstream_mod.Upstream
    port: int
    roles: dict[str, Role] = field(default_factory=dict)

    @property
    def ingress(self) -> Role:
        return self.roles["ingress"]

    @property
    def reconciler(self) -> Role:
        return self.roles["reconciler"]

    def dispatchers(self) -> list[Role]:
        return [role for name, role in self.roles.items() if name.startswith("dispatcher")]

    async def add_dispatcher(self) -> Role:
        """Start one more dispatcher with the others' environment."""
        first = self.dispatchers()[0]
        index = len(self.dispatchers())
        role = Role(f"dispatcher-{index}", ["dispatcher"],
                    {**first.env, "PODPOST_HEALTH__PORT": str(free_port())},
                    self.dir / f"dispatcher-{index}.log")
        self.roles[role.name] = role
        await role.start()
        return role

    def crashed(self) -> list[str]:
        """Roles that ended on their own (not SIGKILLed by us)."""
        return [name for name, role in self.roles.items() if not role.alive]

    async def delivered_counted(self) -> float:
        """The sum of the live dispatchers' ``podpost_dispatcher_delivered_total``."""
        total = 0.0
        for role in self.dispatchers():
            port = role.env.get("PODPOST_HEALTH__PORT")
            if role.alive and port:
                total += await _delivered_total(int(port))
        return total

    def peak_rss(self) -> dict[str, float]:
        return {name: round(peak_rss_mib(role.proc.pid if role.proc else None), 1)
                for name, role in self.roles.items()}


@contextlib.asynccontextmanager
async def running(
    dir: Path, nats_url: str, upstream: upstream_mod.Upstream, *, dispatchers: int = 1,
    policy: str | None = None, **env: str,
) -> AsyncIterator[Relay]:
    """Start the reconciler (file source), one ingress and ``dispatchers`` dispatchers;
    stop them all on exit. ``policy`` replaces the default policy file."""
    dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - local and tiny
    policies = dir / "policies.yaml"
    policies.write_text(policy if policy is not None else
                        POLICY.format(port=upstream.port, conns=MAX_CONNECTIONS))
    relay = Relay(dir=dir, nats_url=nats_url, upstream=upstream, port=free_port())
    variables = environment(nats_url, **env)
    relay.roles["reconciler"] = Role(
        "reconciler", ["reconciler", "--source", "file", "--policies", str(policies)],
        variables, dir / "reconciler.log")
    relay.roles["ingress"] = Role(
        "ingress", ["ingress", "--host", "127.0.0.1", "--port", str(relay.port)],
        variables, dir / "ingress.log")
    for i in range(dispatchers):
        # each dispatcher serves /metrics on a port of its own (`delivered_counted`)
        relay.roles[f"dispatcher-{i}"] = Role(
            f"dispatcher-{i}", ["dispatcher"],
            {**variables, "PODPOST_HEALTH__HOST": "127.0.0.1",
             "PODPOST_HEALTH__PORT": str(free_port())}, dir / f"dispatcher-{i}.log")
    try:
        for role in relay.roles.values():
            await role.start()
        yield relay
    finally:
        await asyncio.gather(*(role.stop() for role in relay.roles.values()))


async def wait_ready(relay: Relay, tag: str = "probe", timeout_s: float = 40.0) -> None:
    """Until one probe mail was answered 250 and reached the upstream (all roles up)."""
    async with asyncio.timeout(timeout_s):
        index = 0
        while True:
            index += 1
            client = await Client.open(relay.port)
            if client is not None:
                try:
                    code = await client.send(message(tag, index))
                finally:
                    await client.close()
                if code == 250:
                    break
            await asyncio.sleep(0.2)
        await arrivals(relay.upstream, lambda: bool(
            count_tokens(relay.upstream.handler.messages, tag)))


async def arrivals(upstream: upstream_mod.Upstream, done: Callable[[], bool]) -> None:
    """Until ``done()`` holds, re-checked whenever the upstream receives a message (the
    caller bounds the wait)."""
    while True:
        upstream.handler.arrived.clear()
        if done():
            return
        await upstream.handler.arrived.wait()


# -- the load ----------------------------------------------------------------------------


class Cut(Exception):
    """The connection ended or stalled in the middle of a reply."""


class Client:
    """A raw SMTP client: MAIL, RCPT and DATA pipelined in one write."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout_s: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout_s = timeout_s
        self.last_reply = ""

    @classmethod
    async def open(cls, port: int, timeout_s: float = 10.0) -> Client | None:
        """Connect, read the banner, EHLO; None when refused or not served."""
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except (OSError, TimeoutError):
            return None
        client = cls(reader, writer, timeout_s)
        try:
            if await client.reply() == 220:
                client.writer.write(b"EHLO load.test\r\n")
                if await client.reply() == 250:
                    return client
        except (Cut, OSError):
            pass
        await client.close()
        return None

    async def reply(self) -> int:
        """The code of one whole reply (its last line is kept in ``last_reply``)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    line = await self.reader.readline()
                    if len(line) < 4 or not line[:3].isdigit():
                        raise Cut(repr(line[:40]))
                    if line[3:4] != b"-":
                        self.last_reply = line.decode(errors="replace").strip()
                        return int(line[:3])
        except TimeoutError as exc:
            raise Cut("timeout") from exc

    async def send(self, data: bytes) -> int:
        """One transaction; the code that ended it (250 = queued). Raises `Cut`/OSError."""
        self.writer.write(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode())
        codes = [await self.reply() for _ in range(3)]
        if codes[2] != 354:
            self.writer.write(b"RSET\r\n")
            await self.reply()
            return next(code for code in codes if code >= 300)
        self.writer.write(data + b".\r\n")
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass
class Load:
    """``count`` messages over ``sessions`` parallel sessions, each retried until 250."""

    port: int
    count: int
    tag: str
    sessions: int = 40
    deadline_s: float = 90.0
    padding: int = 0
    large_every: int = 1
    """Only every ``large_every``-th message gets the ``padding``."""
    confirmed: set[int] = field(default_factory=set)
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    """Non-250 outcomes seen by clients: ``451``, ``421``, ``cut``, ``connect``..."""
    gave_up: set[int] = field(default_factory=set)
    confirmed_at: list[float] = field(default_factory=list)
    """``time.monotonic()`` of each 250, in order."""
    mail_ids: dict[int, str] = field(default_factory=dict)
    """The mail id of each message answered 250 (``queued as <id>``)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _next: int = 0

    async def run(self) -> None:
        stop_at = time.monotonic() + self.deadline_s
        async with asyncio.TaskGroup() as tg:
            for _ in range(self.sessions):
                tg.create_task(self._session(stop_at))

    async def until_confirmed(self, count: int, timeout_s: float = 60.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.confirmed) < count:
                self.changed.clear()
                await self.changed.wait()

    def longest_pause_s(self) -> float:
        """The longest time between two 250s: how long accepting stalled."""
        times = self.confirmed_at
        return round(max((b - a for a, b in itertools.pairwise(times)),
                         default=0.0), 2)

    async def _session(self, stop_at: float) -> None:
        client: Client | None = None
        try:
            while self._next < self.count:
                index = self._next
                self._next += 1
                data = message(self.tag, index,
                               self.padding if index % self.large_every == 0 else 0)
                while True:
                    if time.monotonic() > stop_at:
                        self.gave_up.add(index)
                        break
                    if client is None:
                        client = await Client.open(self.port)
                        if client is None:
                            self.refusals["connect"] += 1
                            await asyncio.sleep(0.1)
                            continue
                    try:
                        code = await client.send(data)
                    except (Cut, OSError):
                        self.refusals["cut"] += 1
                        await client.close()
                        client = None
                        continue
                    if code == 250:
                        self.mail_ids[index] = client.last_reply.rsplit(" ", 1)[-1]
                        self.confirmed.add(index)
                        self.confirmed_at.append(time.monotonic())
                        self.changed.set()
                        break
                    self.refusals[str(code)] += 1
                    if code == 421:
                        await client.close()
                        client = None
                    await asyncio.sleep(0.1)
        finally:
            if client is not None:
                with contextlib.suppress(Cut, OSError):
                    client.writer.write(b"QUIT\r\n")
                await client.close()


# -- figures -----------------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    messages: int
    confirmed: int
    """Answered 250."""
    delivered: int
    """Distinct messages that reached the upstream."""
    lost: int
    """Answered 250, never delivered."""
    duplicated: int
    """Deliveries beyond the first."""
    delivered_unconfirmed: int
    """Delivered although the client never saw 250 (allowed: it was told to retry)."""
    gave_up: int
    refusals: dict[str, int]
    crashes: list[str]
    """Processes that died on their own."""
    peak_rss_mib: dict[str, float]
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in asdict(self).items())


def figures(scenario: str, load: Load, counts: collections.Counter[int], *,
            crashes: list[str], rss: dict[str, float], seconds: float,
            **notes: Any) -> Figures:
    return Figures(
        scenario=scenario, messages=load.count, confirmed=len(load.confirmed),
        delivered=len(counts), lost=len(load.confirmed - set(counts)),
        duplicated=sum(n - 1 for n in counts.values() if n > 1),
        delivered_unconfirmed=len(set(counts) - load.confirmed), gave_up=len(load.gave_up),
        refusals=dict(load.refusals), crashes=crashes, peak_rss_mib=rss,
        seconds=round(seconds, 1), notes=notes)


async def all_delivered(upstream: upstream_mod.Upstream, load: Load, nats_url: str,
                        timeout_s: float = 60.0) -> collections.Counter[int]:
    """Wait (bounded) until every confirmed message reached the upstream and the MAIL
    stream is empty: a work queue drops a message only when it is acked, so a message
    delivered but not acked (a late duplicate) is still in it. The counts either way."""
    stream = names.Bus().mail_stream
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await arrivals(upstream, lambda: not (
                load.confirmed - set(count_tokens(upstream.handler.messages, load.tag))))
            nc = await nats.connect(servers=nats_url.split(","), connect_timeout=2)
            try:
                js = nc.jetstream(timeout=2)
                while True:
                    with contextlib.suppress(nats.errors.Error, TimeoutError):
                        if (await js.stream_info(stream)).state.messages == 0:
                            break
                    await asyncio.sleep(0.2)
            finally:
                await nc.close()
    return count_tokens(upstream.handler.messages, load.tag)
