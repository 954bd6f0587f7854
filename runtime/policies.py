"""Keep the current policy snapshot of the POLICY bucket in memory, for ingress and
dispatchers, and (for the ingress) a copy of the ROUTES bucket.

It polls the bucket's last sequence (a small request) and fetches the snapshot only when
that moved. Polling, unlike an ordered-consumer watch, needs no repair after the broker
restarts or the connection drops: the next poll simply succeeds.

A snapshot that says its routes are in the ROUTES bucket (``routes_bucket``; a cluster's
pods do not fit in one message) is completed by a `RouteMirror`, when the holder has one:
the same poll then reads the ROUTES stream from the last sequence applied, so a pod change
costs a reader one small message, and a reader that starts, or finds the stream reset,
reads it all (docs/kubernetes.md, "Scale").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Protocol

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from runtime import bus, metrics, waiting
from schemas import names
from schemas import snapshot as snapshot_mod

log = structlog.get_logger("podpost.policies")


class SnapshotHolder:
    """The latest good snapshot and its revision; ``None`` until the first one arrives."""

    def __init__(self, role: str = "", routes: RouteSink | None = None) -> None:
        self.role = role
        """The ``role`` label of its metrics; empty: not reported."""
        self.current: snapshot_mod.PolicySnapshot | None = None
        self.revision: int = 0
        self.loaded = asyncio.Event()
        self.checked_at: float | None = None
        """``time.monotonic()`` of the last successful read of the bucket."""
        self.routes: RouteMirror | None = None if routes is None else RouteMirror(routes)
        """The ROUTES bucket's copy, kept only by a holder given a sink (the ingress)."""

    @property
    def routes_loaded(self) -> bool:
        """Whether lookups may use the ROUTES copy: it caught up at least once."""
        return self.routes is not None and self.routes.loaded

    def set(self, snap: snapshot_mod.PolicySnapshot, revision: int) -> None:
        self.current = snap
        self.revision = revision
        self.loaded.set()

    async def refresh(self, conn: bus.Conn) -> bool:
        """Fetch the snapshot if its revision moved, then the routes that changed when the
        snapshot says they are in the ROUTES bucket. True when a new snapshot was loaded."""
        loaded = await self._refresh_snapshot(conn)
        if self.routes is not None and self.current is not None and self.current.routes_bucket:
            await self.routes.refresh(conn)
        return loaded

    async def _refresh_snapshot(self, conn: bus.Conn) -> bool:
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
                    await self._refresh_snapshot(conn)
                if self.routes is not None and self.current and self.current.routes_bucket:
                    await self.routes.refresh(conn)  # bounded by fetch count and deadline
            except bus.TRANSIENT as exc:
                log.warning("policies.refresh_failed", error=str(exc) or type(exc).__name__)
            if await waiting.sleep_or_stop(stop, interval_s):
                return


# --- the routes: a local copy of the ROUTES bucket ----------------------------------------

ROUTES_FETCH_S = 5.0
"""A read of the ROUTES stream gives up when no message came for this long (a stall)."""
_DELETED = frozenset({"DEL", "PURGE"})
_REMOVED_MARKERS = frozenset({"MaxAge", "Purge", "Remove"})


class RouteSink(Protocol):
    """Where a reader keeps the routes (the ingress: `ingress.rules.routing.Table`)."""

    def put(self, key: str, route: snapshot_mod.Route) -> None: ...

    def delete(self, key: str) -> None: ...

    def clear(self) -> None: ...


class RouteMirror:
    """A reader's copy of the ROUTES bucket, brought up to date from the bucket's stream.

    The bucket keeps one message per key (history 1) and a delete marker per deleted key,
    so reading its stream from any sequence onwards yields, for every key changed since,
    its latest value: the first read starts at 1 (a full read), every later one right
    after the last sequence applied (only the changes). A stream that went back (its
    ``created`` time changed, or its last sequence is below what was applied: the broker
    lost its store) is read again from scratch. Like the snapshot, it is polled: a poll
    needs no repair after a broker restart. ``loaded`` is True once the copy caught up
    with the stream at least once since the last full read; before, a missing route may
    only be not read yet."""

    def __init__(self, sink: RouteSink) -> None:
        self.sink = sink
        self.applied = 0
        """The stream sequence of the last message applied."""
        self.created: datetime | None = None
        self.loaded = False
        self.invalid = 0
        """Values that did not decode (skipped)."""

    async def refresh(self, conn: bus.Conn) -> int:
        """Apply what changed since the last read; how many messages were applied."""
        async with asyncio.timeout(conn.deadlines.api_s):
            kv = await bus.routes_kv(conn)
            info = (await kv.status()).stream_info
        last, created = info.state.last_seq, info.created
        if created != self.created or last < self.applied:
            if self.applied:
                log.warning("policies.routes_reset", applied=self.applied, last=last)
            self.sink.clear()
            self.applied, self.created, self.loaded = 0, created, False
        if last <= self.applied:
            self.loaded = True
            return 0
        applied = await self._read(conn, names.kv_stream(conn.names.routes_bucket),
                                   f"$KV.{conn.names.routes_bucket}.", last)
        if self.applied >= last:
            self.loaded = True
        return applied

    async def _read(self, conn: bus.Conn, stream: str, prefix: str, last: int) -> int:
        """Every message from the one after ``applied`` on, through an ordered push
        consumer (a pull fetch hands out about one message per round trip); it stops once
        the stream has nothing more pending, or when no message came for
        ``ROUTES_FETCH_S`` (what was applied stays applied)."""
        caught_up = asyncio.get_running_loop().create_future()
        applied = 0

        async def take(msg: Msg) -> None:
            nonlocal applied
            self._apply(msg.subject[len(prefix):], msg.headers, msg.data)
            meta = msg.metadata
            self.applied, applied = meta.sequence.stream, applied + 1
            if meta.num_pending == 0 and not caught_up.done():
                caught_up.set_result(None)

        async with asyncio.timeout(conn.deadlines.api_s):
            sub = await conn.js.subscribe(
                f"{prefix}>", stream=stream, cb=take, ordered_consumer=True,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                config=ConsumerConfig(opt_start_seq=self.applied + 1, mem_storage=True),
                inactive_threshold=60.0)
        try:
            for _ in range(last - self.applied + 1):  # each round applies one or more
                seen = applied
                await asyncio.wait({caught_up}, timeout=ROUTES_FETCH_S)
                if caught_up.done() or applied == seen:
                    break
        finally:
            caught_up.cancel()
            with contextlib.suppress(*bus.TRANSIENT):
                async with asyncio.timeout(conn.deadlines.api_s):
                    await sub.unsubscribe()
        if caught_up.done() and not caught_up.cancelled():
            self.applied = max(self.applied, last)
        return applied

    def _apply(self, key: str, headers: dict[str, str] | None, data: bytes) -> None:
        if headers and (headers.get("KV-Operation") in _DELETED
                        or headers.get("Nats-Marker-Reason") in _REMOVED_MARKERS):
            self.sink.delete(key)
            return
        try:
            route = snapshot_mod.route_decoder.decode(data)
        except msgspec.DecodeError:
            self.invalid += 1
            self.sink.delete(key)
            return
        self.sink.put(key, route)
