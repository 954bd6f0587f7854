"""``/healthz``, ``/readyz`` and ``/metrics`` over a tiny HTTP/1.1 server, one per process.

Kubernetes probes and Prometheus need three GET routes and nothing else, so this is
``asyncio.start_server`` and a few lines of HTTP rather than a web framework:

- ``/healthz``: 200 whenever the server answers. It runs in the roles' event loop, so an
  answer proves the process is alive and its loop is not blocked.
- ``/readyz``: 200 only when every role of the process is ready, else 503 with a
  one-line reason. A role says what "ready" means by registering probes with `readiness`
  (`connected`: a live broker connection; `loaded`: a policy snapshot); a role the process
  runs but that has not registered yet (still connecting) is not ready, and neither is a
  process that is shutting down.
- ``/metrics``: the Prometheus text format of `runtime.metrics.current`.

Each connection answers one request and is closed. Requests are bounded in size (8 KiB of
head) and time (5 s), and any connection still open when the server stops is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import structlog

from runtime import metrics, waiting
from runtime import settings as settings_mod

log = structlog.get_logger("podpost.health")

Probe = Callable[[], str | None]
"""None when fine, else why not, in a few words."""

REQUEST_TIMEOUT_S = 5.0
HEAD_LIMIT = 8192
MAX_HEADER_LINES = 100
LAG_INTERVAL_S = 1.0
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Readiness:
    """The roles this process runs and the probes each registered."""

    def __init__(self) -> None:
        self._expected: list[str] = []
        self._probes: dict[int, tuple[str, tuple[Probe, ...]]] = {}
        self._tokens = itertools.count()

    @contextlib.contextmanager
    def expecting(self, roles: Iterable[str]) -> Iterator[None]:
        """While inside, each of ``roles`` must have registered to be ready."""
        added = list(roles)
        self._expected.extend(added)
        try:
            yield
        finally:
            for role in added:
                self._expected.remove(role)

    @contextlib.contextmanager
    def registered(self, role: str, *probes: Probe) -> Iterator[None]:
        """While inside, ``role`` is ready when every probe passes."""
        token = next(self._tokens)
        self._probes[token] = (role, probes)
        try:
            yield
        finally:
            del self._probes[token]

    def reason(self) -> str | None:
        """None when ready, else the first reason found, prefixed by its role."""
        present = {role for role, _ in self._probes.values()}
        for role in self._expected:
            if role not in present:
                return f"{role}: starting"
        if not self._probes:
            return "no role started"
        for role, probes in self._probes.values():
            for probe in probes:
                why = probe()
                if why:
                    return f"{role}: {why}"
        return None


readiness = Readiness()
"""The process's readiness; registrations are scoped, so it needs no reset."""


class _Client(Protocol):
    @property
    def is_connected(self) -> bool: ...


class _Holder(Protocol):
    @property
    def current(self) -> object | None: ...


def connected(nc: _Client) -> Probe:
    """Ready while the NATS connection is up (not while nats-py reconnects)."""
    return lambda: None if nc.is_connected else "not connected to NATS"


def loaded(holder: _Holder) -> Probe:
    """Ready once a policy snapshot is held."""
    return lambda: None if holder.current is not None else "no policy snapshot loaded"


def respond(
    method: str, path: str, *, reason: str | None, stopping: bool,
    body_of_metrics: Callable[[], bytes],
) -> tuple[int, str, bytes]:
    """Status, content type and body for one request; pure but for ``body_of_metrics``."""
    text = "text/plain; charset=utf-8"
    if method not in ("GET", "HEAD"):
        return 405, text, b"method not allowed\n"
    route = path.split("?", 1)[0]
    if route == "/healthz":
        return 200, text, b"ok\n"
    if route == "/readyz":
        if stopping:
            return 503, text, b"shutting down\n"
        if reason is not None:
            return 503, text, reason.replace("\n", " ").encode() + b"\n"
        return 200, text, b"ready\n"
    if route == "/metrics":
        return 200, METRICS_TYPE, body_of_metrics()
    return 404, text, b"not found\n"


_STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           503: "Service Unavailable"}


def _response(status: int, content_type: str, body: bytes, *, head: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_STATUS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "", "",
    ]
    return "\r\n".join(lines).encode("ascii") + (b"" if head else body)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """Method and path of one request; None when it is not HTTP we can read."""
    request_line = await reader.readline()
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return parts[0], parts[1]
    return None


class Server:
    """The HTTP server; `serve` runs it."""

    def __init__(self, draining: asyncio.Event) -> None:
        self._draining = draining
        self._handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    request = await _read_request(reader)
            except (TimeoutError, ValueError, ConnectionError):  # ValueError: head too long
                request = None
            if request is None:
                writer.write(_response(400, "text/plain", b"bad request\n", head=False))
            else:
                method, path = request
                status, content_type, body = respond(
                    method, path, reason=readiness.reason(), stopping=self._draining.is_set(),
                    body_of_metrics=lambda: metrics.current().expose())
                writer.write(_response(status, content_type, body, head=method == "HEAD"))
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            if task is not None:
                self._handlers.discard(task)

    async def close(self) -> None:
        """Cancel connections still open (3.11's ``wait_closed`` does not wait for them)."""
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=2.0)


async def _measure_lag(done: asyncio.Event) -> None:
    """Set ``podpost_event_loop_lag_seconds`` once a second until ``done``."""
    loop = asyncio.get_running_loop()
    while not done.is_set():
        started = loop.time()
        if await waiting.sleep_or_stop(done, LAG_INTERVAL_S):
            break
        metrics.current().loop_lag.set(max(0.0, loop.time() - started - LAG_INTERVAL_S))


async def serve(
    cfg: settings_mod.HealthSettings,
    done: asyncio.Event,
    *,
    draining: asyncio.Event | None = None,
    listening: Callable[[str, int], None] | None = None,
) -> None:
    """Serve until ``done`` is set. Once ``draining`` is set, ``/readyz`` answers 503 so
    the Service stops sending traffic while the roles finish."""
    server = Server(draining or asyncio.Event())
    try:
        listener = await asyncio.start_server(server.handle, cfg.host, cfg.port,
                                              limit=HEAD_LIMIT)
    except OSError as exc:  # the process stops: probes on a port nobody serves would lie
        log.error("health.bind_failed", host=cfg.host, port=cfg.port, error=str(exc))
        raise
    host, port = listener.sockets[0].getsockname()[:2]
    log.info("health.listening", host=host, port=port)
    if listening is not None:
        listening(host, port)
    try:
        await _measure_lag(done)
    finally:
        listener.close()
        await server.close()
        await listener.wait_closed()
