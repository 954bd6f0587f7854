"""Keep the current policy snapshot of the POLICY bucket in memory, for ingress and
dispatchers.

It polls the bucket's last sequence (a small request) and fetches the snapshot only when
that moved. Polling, unlike an ordered-consumer watch, needs no repair after the broker
restarts or the connection drops: the next poll simply succeeds.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from runtime import bus, metrics, waiting
from schemas import snapshot as snapshot_mod

log = structlog.get_logger("podpost.policies")


class SnapshotHolder:
    """The latest good snapshot and its revision; ``None`` until the first one arrives."""

    def __init__(self, role: str = "") -> None:
        self.role = role
        """The ``role`` label of its metrics; empty: not reported."""
        self.current: snapshot_mod.PolicySnapshot | None = None
        self.revision: int = 0
        self.loaded = asyncio.Event()
        self.checked_at: float | None = None
        """``time.monotonic()`` of the last successful read of the bucket."""

    def set(self, snap: snapshot_mod.PolicySnapshot, revision: int) -> None:
        self.current = snap
        self.revision = revision
        self.loaded.set()

    async def refresh(self, conn: bus.Conn) -> bool:
        """Fetch the snapshot if its revision moved. True when a new one was loaded."""
        kv = await bus.policy_kv(conn)
        status = await kv.status()
        self.checked_at = time.monotonic()
        last = status.stream_info.state.last_seq
        if last == self.revision:
            return False
        stored = await bus.read_snapshot(conn, kv, known_revision=self.revision)
        if stored.error is not None:
            log.error("policies.snapshot_invalid", revision=stored.revision, error=stored.error)
            self.revision = stored.revision
            return False
        snap = stored.snapshot
        if snap is None:
            return False
        self.set(snap, stored.revision)
        log.info("policies.snapshot_loaded", revision=stored.revision,
                 policies=len(snap.policies), routes=len(snap.routes))
        return True

    async def run(self, conn: bus.Conn, stop: asyncio.Event, interval_s: float = 0.25) -> None:
        """Poll until ``stop`` is set; broker trouble is logged and retried next tick."""
        if self.role:
            with metrics.current().tracking(self.role, self):
                await self._poll(conn, stop, interval_s)
        else:
            await self._poll(conn, stop, interval_s)

    async def _poll(self, conn: bus.Conn, stop: asyncio.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(conn.deadlines.kv_s):
                    await self.refresh(conn)
            except bus.TRANSIENT as exc:
                log.warning("policies.refresh_failed", error=str(exc) or type(exc).__name__)
            if await waiting.sleep_or_stop(stop, interval_s):
                return
