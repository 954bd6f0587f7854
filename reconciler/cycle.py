"""One build-and-publish cycle, the same for both sources.

The file source (`reconciler.filesource`) and the Kubernetes source
(`reconciler.kubesource`) differ in where their `reconciler.rules.inputs.Inputs` come from
and in what they do with the conditions (a log line, status patches); the cycle between is
theirs in common: build the inputs with the pure builder, time it (``build_ms``, the
``podpost_reconciler_build_duration_seconds`` gauge) and say so
(``reconciler.snapshot_built``); then publish the build (`reconciler.publishing`) within
one deadline. A source calls the two steps apart because the file source publishes again
without building (a failed publish is retried, a good build re-checked).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import structlog

from reconciler import publishing
from reconciler.rules import building
from reconciler.rules import inputs as inputs_mod
from runtime import bus, metrics

log = structlog.get_logger("reconciler.cycle")


def build(
    inputs: Callable[[], inputs_mod.Inputs], *, now: datetime, source: str
) -> building.Build:
    """Gather ``inputs()`` and build them; the time both take is the build's. Whatever
    ``inputs`` raises (a file that does not parse) is the caller's."""
    started = time.perf_counter()
    result = building.build(inputs(), now=now, source=source)
    built_s = time.perf_counter() - started
    metrics.current().build_duration.set(built_s)
    log.info("reconciler.snapshot_built", source=source, build_ms=round(built_s * 1000, 1),
             policies=len(result.snapshot.policies), routes=len(result.snapshot.routes))
    return result


async def publish(
    conn: bus.Conn, result: building.Build, *, timeout_s: float
) -> publishing.Published:
    """Make the buckets hold ``result`` within ``timeout_s``; a broker error or the deadline
    (`runtime.bus.TRANSIENT`) is raised for the source to retry."""
    async with asyncio.timeout(timeout_s):
        return await publishing.publish(conn, result)
