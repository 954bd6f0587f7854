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
            for name, serve in serves.items():
                tg.create_task(serve(cfg, stop), name=name)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("process.stopped", roles=sorted(serves))


def run(cfg: settings_mod.Settings, serves: dict[str, Serve]) -> None:
    logs.configure(cfg.log)
    asyncio.run(supervise(cfg, serves))
