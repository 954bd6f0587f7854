"""The reconciler role: build the policy snapshot from its source and publish it.

Wiring only. The file source (the embedded default) lives in `filesource`, the Kubernetes
source in `kubesource`; both run the one build-and-publish cycle of `cycle` (the pure
builder `rules.building`, then `publishing`).
"""

from __future__ import annotations

import asyncio

import structlog

from reconciler import filesource
from runtime import bus, health
from runtime import settings as settings_mod

log = structlog.get_logger("reconciler.main")


async def serve(cfg: settings_mod.Settings, stop: asyncio.Event) -> None:
    """Run the configured source until ``stop`` is set."""
    if cfg.reconciler.source == "kubernetes":
        from reconciler import kubesource

        await kubesource.serve(cfg, stop)
        return
    async with bus.connect(cfg.nats, "reconciler") as conn:
        log.info("reconciler.started", source="file", path=cfg.reconciler.file)
        with health.readiness.registered("reconciler", health.connected(conn.nc)):
            await filesource.run(conn, cfg.reconciler, stop)
    log.info("reconciler.stopped", source="file")
