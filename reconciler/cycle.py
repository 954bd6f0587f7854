"""One build-and-publish cycle, the same for both sources.

The file source (`reconciler.filesource`) and the Kubernetes source
(`reconciler.kubesource`) differ in where their `reconciler.rules.inputs.Inputs` come from
and in what they do with the conditions (a log line, status patches); the cycle between is
theirs in common: build the inputs with the pure builder, time it (``build_ms``, the
``podpost_reconciler_build_duration_seconds`` gauge) and say so
(``reconciler.snapshot_built``); then publish the build (`reconciler.publishing`) within
one deadline. The kubernetes source builds incrementally instead (`build_incremental`,
`reconciler.rules.routebook`) and publishes its routes to the ROUTES bucket as well. A
source calls the two steps apart because the file source publishes again
without building (a failed publish is retried, a good build re-checked).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from datetime import datetime

import structlog

from reconciler import publishing
from reconciler.rules import building, inventory, routebook
from reconciler.rules import inputs as inputs_mod
from runtime import bus, metrics

log = structlog.get_logger("reconciler.cycle")

FREEZE_AFTER = 10_000
"""An incremental build taking in at least this many pod changes (a relist of a big
cluster) moves everything alive into the collector's permanent generation afterwards."""


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


def build_incremental(
    book: routebook.RouteBook, inv: inventory.Inventory, *, now: datetime
) -> building.Build:
    """The kubernetes source's build: take the inventory's changes into the route book
    and build from it, timed and logged as `build` is."""
    started = time.perf_counter()
    bulk = len(inv.pods.dirty) >= FREEZE_AFTER
    collecting = gc.isenabled()
    gc.disable()  # a relist allocates 150,000 pods' worth: no collection pass halfway
    try:
        book.sync(inv)
        result = book.build(now=now)
    finally:
        if collecting:
            gc.enable()
    if bulk:
        gc.freeze()  # what a relist built lives on: later collections need not scan it
    built_s = time.perf_counter() - started
    metrics.current().build_duration.set(built_s)
    log.info("reconciler.snapshot_built", source=book.source,
             build_ms=round(built_s * 1000, 1), policies=len(result.snapshot.policies),
             routes=len(book.routes))
    return result


async def publish(
    conn: bus.Conn, result: building.Build, *, timeout_s: float,
    routes: publishing.RouteChanges | None = None, marks: publishing.Marks | None = None,
) -> publishing.Published:
    """Make the buckets hold ``result`` (and ``routes``) within ``timeout_s``; a broker
    error or the deadline (`runtime.bus.TRANSIENT`) is raised for the source to retry."""
    async with asyncio.timeout(timeout_s):
        return await publishing.publish(conn, result, routes=routes, marks=marks)
