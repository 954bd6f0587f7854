"""Keep the current policy snapshot of the POLICY bucket in memory, for ingress and
dispatchers.

It polls the bucket's last sequence (a small request) and fetches the snapshot only when
that moved. Polling, unlike an ordered-consumer watch, needs no repair after the broker
restarts or the connection drops: the next poll simply succeeds.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats.errors
import nats.js.errors
import structlog

from runtime import bus, metrics
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
        try:
            entry = await kv.get(conn.names.snapshot_key)
        except nats.js.errors.KeyNotFoundError:
            return False
        if entry.value is None or entry.revision is None or entry.revision == self.revision:
            return False
        try:
            snap = snapshot_mod.decode_snapshot(entry.value)
        except msgspec.DecodeError as exc:
            log.error("policies.snapshot_invalid", revision=entry.revision, error=str(exc))
            self.revision = entry.revision
            return False
        self.set(snap, entry.revision)
        log.info("policies.snapshot_loaded", revision=entry.revision,
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
                await asyncio.wait_for(self.refresh(conn), 5.0)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log.warning("policies.refresh_failed", error=str(exc) or type(exc).__name__)
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass
