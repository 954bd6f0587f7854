"""Sample the MAIL stream's consumers into the queue-depth and lag gauges.

Every ``health.sample_interval_s`` one consumer listing (`runtime.bus.consumer_infos`) reads
``num_pending`` (never handed out: the lag an autoscaler watches) and ``num_ack_pending``
(handed out, not acked: in delivery or waiting for a retry) of every durable consumer, and
`runtime.metrics.Metrics.set_consumers` replaces the gauges with them. A replica started
for some upstreams reports only theirs. Every replica reports the same broker-side
numbers, so aggregate them with ``max``, not ``sum``. A failed sample keeps the last
values; it is logged and tried again next time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import structlog

from runtime import bus, metrics, waiting
from runtime import settings as settings_mod
from schemas import names

log = structlog.get_logger("dispatcher.sampling")

Row = tuple[str | None, int | None, int | None]
"""A consumer's filter subject, num_pending and num_ack_pending, as the server says."""


def rows(bus_names: names.Bus, consumers: Iterable[Row], serve: Sequence[str]
         ) -> dict[tuple[str, str], tuple[int, int]]:
    """(upstream, policy) -> (pending, ack pending) for the mail consumers this replica
    serves (all when ``serve`` is empty); other consumers are left out."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for subject, pending, ack_pending in consumers:
        if not subject:
            continue
        try:
            pair = bus_names.parse_mail_subject(subject)
        except names.InvalidKey:
            continue
        if serve and pair[0] not in serve:
            continue
        old = out.get(pair, (0, 0))
        out[pair] = (old[0] + (pending or 0), old[1] + (ack_pending or 0))
    return out


async def sample(conn: bus.Conn, serve: Sequence[str]) -> None:
    """One sample into the gauges."""
    infos = await bus.consumer_infos(conn)
    metrics.current().set_consumers(rows(
        conn.names,
        ((info.config.filter_subject, info.num_pending, info.num_ack_pending)
         for info in infos),
        serve,
    ))


async def run(conn: bus.Conn, cfg: settings_mod.Settings, stop: asyncio.Event) -> None:
    """Sample until ``stop``."""
    while not stop.is_set():
        try:
            await sample(conn, cfg.dispatcher.upstreams)
        except bus.TRANSIENT as exc:
            log.warning("dispatcher.sample_failed", error=str(exc) or repr(exc))
        await waiting.sleep_or_stop(stop, cfg.health.sample_interval_s)
