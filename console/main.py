"""The console role: the web app on ``console.host:console.port`` and its live updates.

Wiring only: connect to the bus, bind the socket (port 0 picks a free one, for tests),
serve the ASGI app with uvicorn and keep the NATS subscription of `console.live` until
``stop``. The process supervisor owns the signals, so uvicorn's own signal capture is
turned off; on stop, open streams end and requests get ``grace_s`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import structlog
import uvicorn

from console import app as app_mod
from console import live as live_mod
from runtime import bus, health
from runtime import settings as settings_mod

log = structlog.get_logger("console.main")


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: `podpost.process` has the only ones."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, reuse_port=False)
    sock.setblocking(False)
    return sock


def url_of(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


async def serve(
    cfg: settings_mod.Settings,
    stop: asyncio.Event,
    *,
    listening: Callable[[str], None] | None = None,
) -> None:
    """Run the console until ``stop``; ``listening(url)`` is called once it is bound."""
    ccfg = cfg.console
    async with bus.connect(cfg.nats, "console") as conn:
        live = live_mod.Live(stop)
        app = app_mod.create(conn, ccfg, live)
        sock = _bind(ccfg.host, ccfg.port)
        host, port = sock.getsockname()[:2]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=int(max(cfg.grace_s, 1)))
        server = _Server(config)
        url = url_of(host, port)
        log.info("console.listening", url=url, actions=bool(ccfg.token))
        if listening is not None:
            listening(url)
        with health.readiness.registered("console", lambda: None, health.connected(conn.nc)):
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(live.run(conn), name="console.live")
                    serving = tg.create_task(server.serve(sockets=[sock]), name="console.http")
                    await stop.wait()
                    server.should_exit = True
                    await serving
            finally:
                sock.close()
        log.info("console.stopped")
