"""One supervisor per process: logs configured once, signals only set an Event, the role
runs until that Event is set and then drains within ``settings.grace_s``.

The supervisor also owns what is per process rather than per role: a fresh metrics
registry and, when ``settings.health.port`` is set, the one `health` server (``podpost
dev`` runs every role in one process and still has one). It serves until the roles have
returned; ``/readyz`` turns 503 as soon as the drain starts.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from runtime import health, logs, metrics
from runtime import settings as settings_mod

Serve = Callable[[settings_mod.Settings, asyncio.Event], Coroutine[Any, Any, None]]

log = structlog.get_logger("podpost.process")


async def supervise(cfg: settings_mod.Settings, serves: dict[str, Serve]) -> None:
    """Run each role's ``serve`` in one TaskGroup until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics.reset()
    try:
        with health.readiness.expecting(serves):
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(serve(cfg, stop), name=name)
                         for name, serve in serves.items()]
                tg.create_task(_enforce_grace(stop, tasks, cfg.grace_s))
                if cfg.health.port:
                    done = asyncio.Event()
                    tg.create_task(health.serve(cfg.health, done, draining=stop), name="health")
                    tg.create_task(_when_done(tasks, done))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("process.stopped", roles=sorted(serves))


async def _enforce_grace(
    stop: asyncio.Event, tasks: list[asyncio.Task[None]], grace_s: float
) -> None:
    """Once stopping, give the roles ``grace_s`` (plus a little for their own cleanup) to
    drain, then cancel what is left: a role stuck connecting must not hold the process."""
    await stop.wait()
    _, pending = await asyncio.wait(tasks, timeout=grace_s + 2.0)
    for task in pending:
        log.warning("process.role_cancelled", role=task.get_name())
        task.cancel()


async def _when_done(tasks: list[asyncio.Task[None]], done: asyncio.Event) -> None:
    """Set ``done`` once every role has returned, so health answers until then."""
    try:
        await asyncio.wait(tasks)
    finally:
        done.set()


def run(cfg: settings_mod.Settings, serves: dict[str, Serve]) -> None:
    logs.configure(cfg.log)
    asyncio.run(supervise(cfg, serves))
