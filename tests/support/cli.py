"""Run the real ``podpost`` entry point as a subprocess from an async test, so whatever
the test runs in its own loop (a dispatcher, an ingress) keeps running meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PODPOST = Path(sys.executable).parent / "podpost"
"""The console script pip installed beside this Python (``.venv/bin/podpost``)."""


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode()

    @property
    def err(self) -> str:
        return self.stderr.decode()

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.stdout)


def environment(nats_url: str) -> dict[str, str]:
    """This process's environment without any PODPOST_ setting but the broker's URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODPOST_")}
    env.update(PODPOST_NATS_URL=nats_url, COLUMNS="250", NO_COLOR="1", TERM="dumb")
    return env


async def podpost(nats_url: str, *args: str, timeout_s: float = 30.0,
                  env: Mapping[str, str] | None = None, stdin: bytes | None = None) -> Result:
    """``podpost ARGS`` against ``nats_url`` (``env`` on top of `environment`, ``stdin``
    piped in, else none); killed if it outlives ``timeout_s``."""
    proc = await asyncio.create_subprocess_exec(
        str(PODPOST), *args,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**environment(nats_url), **(env or {})})
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, stdout, stderr)


def one_line_error(result: Result) -> str:
    """The error a command printed: one line on stderr, no traceback, non-zero exit."""
    assert result.code != 0, result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]
