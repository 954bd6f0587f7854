"""One supervisor per process: logs configured once, signals only set an Event, the role
runs until that Event is set and then drains within ``settings.grace_s``."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from podpost import logs
from podpost import settings as settings_mod

Serve = Callable[[settings_mod.Settings, asyncio.Event], Coroutine[Any, Any, None]]

log = structlog.get_logger("podpost.process")


async def supervise(cfg: settings_mod.Settings, serves: dict[str, Serve]) -> None:
    """Run each role's ``serve`` in one TaskGroup until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(serve(cfg, stop), name=name) for name, serve in serves.items()]
            tg.create_task(_enforce_grace(stop, tasks, cfg.grace_s))
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


def run(cfg: settings_mod.Settings, serves: dict[str, Serve]) -> None:
    logs.configure(cfg.log)
    asyncio.run(supervise(cfg, serves))
