"""Publish a build: the snapshot to the POLICY bucket, the logins and the upstreams' CA
bundles to the CREDENTIALS bucket.

Both sources end here. Publishing is stateless and compares against what the buckets hold,
so a restarted reconciler (or a new leader) neither republishes an unchanged snapshot nor
leaves a stale login behind. The order keeps dispatchers supplied: new and changed logins
first, then the snapshot that names them, then the deletion of logins no snapshot names any
more. Passwords are never logged; only CREDENTIALS keys (``<ns>__<secret>``, and
``ca.<hash>`` for a CA bundle) are.

A kubernetes source's routes go to the ROUTES bucket too, one key per network
(`schemas.names.route_key`), after the snapshot (whose policies they name): only the keys
the incremental build says changed, unless the bucket's stream is not where this
reconciler left it (first publish, another leader wrote, the broker lost its store, a write
failed half-way): then the bucket is read and every difference written. `Marks` remembers
where it left the buckets, so an unchanged snapshot or set of logins costs one status call
instead of a read of every value.

Every run is counted by outcome (``changed``, ``unchanged``, ``failed``), and the snapshot
in force is reported as the reconciler's in the ``podpost_snapshot_*`` gauges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from reconciler.rules import building
from runtime import bus, metrics, policies
from schemas import names, snapshot

log = structlog.get_logger("reconciler.publishing")

_credentials_encoder = msgspec.json.Encoder()


class _Digest(msgspec.Struct):
    """Just the digest of a stored snapshot; the rest is not decoded."""

    digest: str = ""


_digest_decoder = msgspec.json.Decoder(_Digest)


class Published(msgspec.Struct, frozen=True, kw_only=True):
    revision: int
    """The POLICY bucket revision of the snapshot now in force."""
    snapshot_changed: bool
    credentials_put: list[str] = []
    credentials_deleted: list[str] = []
    routes_put: int = 0
    routes_deleted: int = 0
    routes_bytes: int = 0
    """Bytes of route values written (keys and headers not counted)."""
    routes_resynced: bool = False
    """The ROUTES bucket was read and compared whole."""


class RouteChanges(msgspec.Struct, frozen=True, kw_only=True):
    """The routes to publish: the whole table, and the networks changed since the last
    publish that succeeded (None: compare the whole table with the bucket)."""

    table: Mapping[str, snapshot.Route]
    """Network -> route (`routebook.RouteBook.routes`)."""
    changed: Collection[str] | None = None


StreamMark = tuple[datetime | None, int]
"""A stream's identity and position: (created, last sequence)."""


@dataclass
class Marks:
    """Where this reconciler left the buckets. A mark that no longer matches the stream
    (or none) means: read and compare, as a stateless publish does."""

    snapshot: tuple[str, StreamMark] | None = None
    credentials: tuple[dict[str, bytes], StreamMark] | None = None
    routes: StreamMark | None = None
    pending: set[str] = field(default_factory=set)
    """Changed networks of a publish that failed, to write with the next one."""
    encoded: tuple[object, object, dict[str, bytes]] | None = None
    """The logins and CA bundles last encoded, and their encoding: a pod change leaves
    them as they are, and a thousand namespaces' logins are not encoded again for it."""


def _encoded_credentials(result: building.Build, marks: Marks) -> dict[str, bytes]:
    if marks.encoded is not None and marks.encoded[0] == result.credentials \
            and marks.encoded[1] == result.cas:
        return marks.encoded[2]
    wanted = {key: _credentials_encoder.encode(login)
              for key, login in result.credentials.items()}
    wanted.update((key, _credentials_encoder.encode(ca)) for key, ca in result.cas.items())
    marks.encoded = (dict(result.credentials), dict(result.cas), wanted)
    return wanted


async def _mark(kv: KeyValue, timeout_s: float) -> StreamMark:
    async with asyncio.timeout(timeout_s):
        info = (await kv.status()).stream_info
    return info.created, info.state.last_seq


class _Routes:
    """A `runtime.policies.RouteSink` that keeps what the ROUTES bucket holds."""

    def __init__(self) -> None:
        self.held: dict[str, snapshot.Route] = {}

    def put(self, key: str, route: snapshot.Route) -> None:
        self.held[key] = route

    def delete(self, key: str) -> None:
        self.held.pop(key, None)

    def clear(self) -> None:
        self.held.clear()


WRITE_WINDOW = 512
"""Route writes in flight at once: a first publish of 150,000 routes is not 150,000
sequential round trips."""


async def _no_mark() -> StreamMark:
    return None, 0


async def _write_routes(conn: bus.Conn, routes: RouteChanges, marks: Marks, mark: StreamMark
                        ) -> tuple[int, int, int, bool]:
    """Make the ROUTES bucket hold ``routes.table``: (put, deleted, bytes, resynced);
    ``mark``: where the bucket stood before this publish wrote anything."""
    kv = await bus.routes_kv(conn)
    encode = snapshot.route_encoder.encode
    resync = routes.changed is None or marks.routes != mark
    if resync:
        stored = _Routes()
        await policies.RouteMirror(stored).refresh(conn)
        wanted = {names.route_key(n): r for n, r in routes.table.items()}
        puts = {k: encode(r) for k, r in wanted.items() if stored.held.get(k) != r}
        deletes = sorted(stored.held.keys() - wanted.keys())
    else:
        changed = marks.pending | set(routes.changed or ())
        puts = {names.route_key(n): encode(routes.table[n])
                for n in sorted(changed) if n in routes.table}
        deletes = [names.route_key(n) for n in sorted(changed) if n not in routes.table]
    marks.routes = None  # until every write below is done
    if not resync:
        marks.pending = changed
    subject = f"$KV.{conn.names.routes_bucket}."
    writes = [*(kv.put(k, v) for k, v in puts.items()),
              *(_delete(conn, subject + k) for k in deletes)]
    last = mark[1]
    for start in range(0, len(writes), WRITE_WINDOW):
        last = max(last, *await asyncio.gather(*writes[start:start + WRITE_WINDOW]))
    # Our writes are the stream's last messages unless someone else wrote meanwhile; then
    # the next publish finds the mark off and compares the whole bucket.
    marks.routes, marks.pending = (mark[0], last), set()
    return len(puts), len(deletes), sum(map(len, puts.values())), resync


async def _delete(conn: bus.Conn, subject: str) -> int:
    """`KeyValue.delete` (a delete marker: ``KV-Operation: DEL``), returning the marker's
    sequence, which nats-py's delete does not."""
    ack = await conn.js.publish(subject, b"", headers={"KV-Operation": "DEL"})
    return ack.seq


async def _current(kv: KeyValue, key: str) -> tuple[str, int] | None:
    """Digest and revision of the stored snapshot, if there is a readable one."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    if entry.value is None or entry.revision is None:
        return None
    try:
        return _digest_decoder.decode(snapshot.snapshot_json(entry.value)).digest, entry.revision
    except msgspec.DecodeError:
        return None


async def _stored_keys(kv: KeyValue) -> set[str]:
    try:
        return set(await kv.keys())
    except nats.js.errors.NoKeysError:
        return set()


async def _put_credentials(
    kv: KeyValue, wanted: dict[str, bytes], stored: set[str]
) -> list[str]:
    """Put each encoded login or CA bundle whose stored value differs; the keys written."""
    written = []
    for key, value in wanted.items():
        if key in stored:
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                entry = None
            if entry is not None and entry.value == value:
                continue
        await kv.put(key, value)
        written.append(key)
    return written


async def publish(conn: bus.Conn, result: building.Build, *,
                  routes: RouteChanges | None = None, marks: Marks | None = None) -> Published:
    """Make the buckets hold ``result`` (and ``routes``, when given); only what changed is
    written. ``marks``: where the previous publish left the buckets."""
    m = metrics.current()
    try:
        published = await _publish(conn, result, routes, marks)
    except (Exception, asyncio.CancelledError):  # a deadline cancels it: counted, re-raised
        m.publishes.labels("failed").inc()
        raise
    m.publishes.labels("changed" if published.snapshot_changed else "unchanged").inc()
    m.record_published(result.snapshot, published.revision)
    return published


async def _publish(conn: bus.Conn, result: building.Build, routes: RouteChanges | None,
                   remembered: Marks | None) -> Published:
    marks = remembered or Marks()
    policy_kv = await bus.policy_kv(conn)
    credentials_kv = await bus.credentials_kv(conn)
    wanted = _encoded_credentials(result, marks)
    # Where each bucket stands before anything is written, asked at once (one round trip).
    api_s = conn.deadlines.api_s
    credentials_mark, policy_mark, routes_mark = await asyncio.gather(
        _mark(credentials_kv, api_s), _mark(policy_kv, api_s),
        _mark(await bus.routes_kv(conn), api_s) if routes is not None else _no_mark())
    same_logins = marks.credentials is not None and marks.credentials[0] == wanted and (
        marks.credentials[1] == credentials_mark)
    stored: set[str] = set(wanted) if same_logins else await _stored_keys(credentials_kv)
    put = [] if same_logins else await _put_credentials(credentials_kv, wanted, stored)

    snap = result.snapshot
    current: tuple[str, int] | None = None
    if marks.snapshot is not None and marks.snapshot[0] == snap.digest:
        if policy_mark == marks.snapshot[1]:
            current = (snap.digest, policy_mark[1])
    if current is None:
        current = await _current(policy_kv, conn.names.snapshot_key)
    if current is not None and current[0] == snap.digest:
        revision, changed = current[1], False
    else:
        encoded = snapshot.encode_snapshot(snap)  # zlib: 10k pods are ~90 KB, not 1.3 MB
        revision = await policy_kv.put(conn.names.snapshot_key, encoded)
        changed = True
        log.info("reconciler.snapshot_published", revision=revision, source=snap.source,
                 policies=len(snap.policies), routes=len(snap.routes), digest=snap.digest[:12])
    if remembered is not None and (changed or marks.snapshot is None
                                   or marks.snapshot[1][1] != revision):
        marks.snapshot = (snap.digest, await _mark(policy_kv, conn.deadlines.api_s))

    put_routes = deleted_routes = routes_bytes = 0
    resynced = False
    if routes is not None:
        put_routes, deleted_routes, routes_bytes, resynced = await _write_routes(
            conn, routes, marks, routes_mark)
        if put_routes or deleted_routes:
            log.info("reconciler.routes_published", put=put_routes, deleted=deleted_routes,
                     resynced=resynced, routes=len(routes.table))

    deleted = sorted(stored - set(wanted))
    for key in deleted:
        await credentials_kv.delete(key)
    if put or deleted:
        log.info("reconciler.credentials_published", put=put, deleted=deleted)
    if remembered is not None and not (same_logins and not deleted):
        marks.credentials = (wanted, await _mark(credentials_kv, conn.deadlines.api_s))
    return Published(revision=revision, snapshot_changed=changed,
                     credentials_put=put, credentials_deleted=deleted,
                     routes_put=put_routes, routes_deleted=deleted_routes,
                     routes_bytes=routes_bytes, routes_resynced=resynced)
