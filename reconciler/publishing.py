"""Publish a build: the snapshot to the POLICY bucket, the logins and the upstreams' CA
bundles to the CREDENTIALS bucket.

Both sources end here. Publishing is stateless and compares against what the buckets hold,
so a restarted reconciler (or a new leader) neither republishes an unchanged snapshot nor
leaves a stale login behind. The order keeps dispatchers supplied: new and changed logins
first, then the snapshot that names them, then the deletion of logins no snapshot names any
more. Passwords are never logged; only CREDENTIALS keys (``<ns>__<secret>``, and
``ca.<hash>`` for a CA bundle) are.

Every run is counted by outcome (``changed``, ``unchanged``, ``failed``), and the snapshot
in force is reported as the reconciler's in the ``podpost_snapshot_*`` gauges.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from reconciler.rules import building
from runtime import bus, metrics
from schemas import snapshot

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


async def publish(conn: bus.Conn, result: building.Build) -> Published:
    """Make the buckets hold ``result``; only what changed is written."""
    m = metrics.current()
    try:
        published = await _publish(conn, result)
    except (Exception, asyncio.CancelledError):  # a deadline cancels it: counted, re-raised
        m.publishes.labels("failed").inc()
        raise
    m.publishes.labels("changed" if published.snapshot_changed else "unchanged").inc()
    m.record_published(result.snapshot, published.revision)
    return published


async def _publish(conn: bus.Conn, result: building.Build) -> Published:
    policy_kv = await bus.policy_kv(conn)
    credentials_kv = await bus.credentials_kv(conn)
    stored = await _stored_keys(credentials_kv)
    wanted = {key: _credentials_encoder.encode(login)
              for key, login in result.credentials.items()}
    wanted.update((key, _credentials_encoder.encode(ca)) for key, ca in result.cas.items())
    put = await _put_credentials(credentials_kv, wanted, stored)

    snap = result.snapshot
    current = await _current(policy_kv, conn.names.snapshot_key)
    if current is not None and current[0] == snap.digest:
        revision, changed = current[1], False
    else:
        encoded = snapshot.encode_snapshot(snap)  # zlib: 10k pods are ~90 KB, not 1.3 MB
        revision = await policy_kv.put(conn.names.snapshot_key, encoded)
        changed = True
        log.info("reconciler.snapshot_published", revision=revision, source=snap.source,
                 policies=len(snap.policies), routes=len(snap.routes), digest=snap.digest[:12])

    deleted = sorted(stored - set(wanted))
    for key in deleted:
        await credentials_kv.delete(key)
    if put or deleted:
        log.info("reconciler.credentials_published", put=put, deleted=deleted)
    return Published(revision=revision, snapshot_changed=changed,
                     credentials_put=put, credentials_deleted=deleted)
