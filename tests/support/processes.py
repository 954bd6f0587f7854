"""Real ``podpost dispatcher`` processes for the end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

PODPOST = str(Path(sys.executable).parent / "podpost")


@contextlib.asynccontextmanager
async def dispatchers(count: int, nats_url: str, logs: Path, **env: str
                      ) -> AsyncIterator[list[Path]]:
    """``count`` ``podpost dispatcher`` processes with JSON logs in ``logs``
    (``dispatcher-<i>.log``, yielded), the caller's ``PODPOST_*`` variables on top of a
    clean environment; SIGTERM (then SIGKILL after 10 s) on exit, and their log tails
    printed (pytest shows them when the test fails)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PODPOST_")}
    environ.update({"PODPOST_NATS_URL": nats_url, "PODPOST_LOG__FORMAT": "json",
                    "PODPOST_GRACE_S": "2",
                    "PODPOST_DISPATCHER__DISCOVERY_INTERVAL_S": "0.2", **env})
    paths = [logs / f"dispatcher-{i}.log" for i in range(count)]
    procs: list[asyncio.subprocess.Process] = []
    try:
        for path in paths:
            with open(path, "wb") as log:  # noqa: ASYNC230 - a local file, opened once
                procs.append(await asyncio.create_subprocess_exec(
                    PODPOST, "dispatcher", env=environ, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=asyncio.subprocess.STDOUT))
        yield paths
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for path in paths:
            if path.exists():
                print(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
