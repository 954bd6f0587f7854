"""Cleaning up after the fact: the backlog of cleanups that could not run when a mail left
the MAIL stream, and the periodic sweep of residue no cleanup will ever name.

- **The backlog** (`recording.Backlog`) is retried every `BACKLOG_PERIOD_S`: a cleanup whose
  ack was unconfirmed runs once the stream no longer holds its message (while it does, its
  redelivery finishes the mail and cleans up itself); one that failed (a body store without
  a leader, a broker away) is tried again, `MAX_TRIES` times, then left to the sweep.
- **The sweep** runs every ``sweep_interval_s`` (the first one after a random part of it,
  so replicas spread out): it lists the attempt records, the body objects (delete markers
  included) and the chunk sets, *then* reads what live mail names (MAIL by sequence, DEAD
  and CAUGHT by a scan), and removes what `residue.residue` finds: nothing younger than
  ``sweep_grace_s``, nothing live mail names. A record is deleted only at the revision
  listed, so one written since stays. When a stream holds more than `MAX_LIVE` messages the
  sweep does not know every live name and removes nothing it could not vouch for.

Every replica sweeps; two sweeps at once remove the same residue twice, which is harmless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.js.errors
import structlog

from dispatcher import recording
from dispatcher.rules import residue
from runtime import bodystore, bus, scanning, waiting
from runtime import settings as settings_mod
from schemas import mail, names

log = structlog.get_logger("dispatcher.sweeping")

BACKLOG_PERIOD_S = 2.0
MAX_TRIES = 30
"""A cleanup is tried this often (a minute at `BACKLOG_PERIOD_S`), then left to the sweep."""
MAX_LIVE = 20_000
"""A sweep reads at most this many messages of MAIL, DEAD and CAUGHT each."""
MAX_LISTED = 100_000
"""A sweep looks at no more records, objects or chunk sets than this at once."""

_dead_decoder = msgspec.json.Decoder(mail.DeadLetter)
_caught_decoder = msgspec.json.Decoder(mail.Caught)


@dataclass(frozen=True)
class Swept:
    """What one sweep removed (or, with ``skipped``, why it removed nothing)."""

    records: int = 0
    bodies: int = 0
    chunks: int = 0
    skipped: str = ""


async def run(stores: recording.Stores, cfg: settings_mod.DispatcherSettings,
              stop: asyncio.Event) -> None:
    """Retry the backlog and sweep until ``stop``."""
    loop = asyncio.get_running_loop()
    interval = cfg.sweep_interval_s
    next_sweep = loop.time() + random.uniform(0.1, 1.0) * interval
    while not stop.is_set():
        await waiting.sleep_or_stop(stop, BACKLOG_PERIOD_S)
        await retry_backlog(stores)
        if interval > 0 and loop.time() >= next_sweep and not stop.is_set():
            try:
                await sweep(stores, now=datetime.now(UTC), grace_s=cfg.sweep_grace_s)
            except bus.TRANSIENT as exc:
                log.warning("dispatcher.sweep_failed", error=str(exc) or repr(exc))
            next_sweep = loop.time() + interval


async def retry_backlog(stores: recording.Stores) -> None:
    """One pass over the backlog (see the module docstring)."""
    conn = stores.conn
    for cleanup in stores.backlog.take():
        if cleanup.tries >= MAX_TRIES:
            log.warning("dispatcher.cleanup_abandoned", key=cleanup.key,
                        reason="left to the sweep")
            continue
        if cleanup.seq:
            try:
                held = await scanning.get(conn, conn.names.mail_stream, cleanup.seq)
            except bus.TRANSIENT:  # unknown: ask again next time
                stores.backlog.add(dataclasses.replace(cleanup, tries=cleanup.tries + 1))
                continue
            if held is not None:
                stores.backlog.add(dataclasses.replace(cleanup, tries=cleanup.tries + 1))
                continue
            cleanup = dataclasses.replace(cleanup, seq=0)
        await recording.clean(stores, cleanup)


async def sweep(stores: recording.Stores, *, now: datetime, grace_s: float) -> Swept:
    """List, read what is live, remove the residue; see the module docstring."""
    conn = stores.conn
    records = await _records(conn)
    bodies = await _bodies(conn)
    chunks = await _chunks(stores, {b.nuid for b in bodies if not b.deleted})
    keys, body_names = await _mail(conn)
    if keys is None:
        return _skipped("the MAIL stream holds too many messages")
    kept = await _kept_bodies(conn)
    if kept is None:
        return _skipped("DEAD or CAUGHT holds too many messages")
    found = residue.residue(records, bodies, chunks,
                            residue.Live(keys=frozenset(keys), bodies=frozenset(body_names | kept)),
                            now=now, grace_s=grace_s)
    removed = 0
    for record in found.records:
        try:
            async with asyncio.timeout(conn.deadlines.kv_s):
                await stores.attempts.delete(record.key, last=record.revision)
            removed += 1
        except nats.js.errors.KeyWrongLastSequenceError:
            continue  # written since it was listed: someone's again
    for body in found.bodies:
        await bodystore.purge(conn, stores.bodies, body.name, body.nuid)
    for chunk in found.chunks:
        await bodystore.purge_chunks(conn, chunk.nuid)
    swept = Swept(records=removed, bodies=len(found.bodies), chunks=len(found.chunks))
    log.info("dispatcher.sweep_done", records=swept.records, bodies=swept.bodies,
             chunks=swept.chunks)
    return swept


def _skipped(reason: str) -> Swept:
    log.warning("dispatcher.sweep_skipped", reason=reason)
    return Swept(skipped=reason)


async def _records(conn: bus.Conn) -> list[residue.Record]:
    bucket = conn.names.attempts_bucket
    prefix = f"$KV.{bucket}."
    out: list[residue.Record] = []
    for stored in await scanning.scan(conn, names.kv_stream(bucket), prefix + ">",
                                      last_per_subject=True, limit=MAX_LISTED):
        if stored.headers.get("KV-Operation") in ("DEL", "PURGE") or stored.time is None:
            continue
        out.append(residue.Record(key=stored.subject[len(prefix):], revision=stored.seq,
                                  written_at=stored.time))
    return out


async def _bodies(conn: bus.Conn) -> list[residue.Body]:
    bucket = conn.names.bodies_bucket
    out: list[residue.Body] = []
    for stored in await scanning.scan(conn, names.obj_stream(bucket), f"$O.{bucket}.M.>",
                                      last_per_subject=True, limit=MAX_LISTED):
        try:
            meta = json.loads(stored.data)
        except ValueError:
            continue
        if stored.time is None or not isinstance(meta, dict):
            continue
        out.append(residue.Body(name=str(meta.get("name", "")), nuid=str(meta.get("nuid", "")),
                                deleted=bool(meta.get("deleted")), written_at=stored.time))
    return out


async def _chunks(stores: recording.Stores, named: set[str]) -> list[residue.Chunks]:
    """The chunk sets no live object's meta names, with the time of their newest chunk."""
    conn = stores.conn
    stream = bodystore.stream(conn)
    prefix = bodystore.chunks_subject(conn, "")
    async with asyncio.timeout(conn.deadlines.api_s):
        info = await conn.js.stream_info(stream, subjects_filter=prefix + ">")
    out: list[residue.Chunks] = []
    for subject in list(info.state.subjects or {})[:MAX_LISTED]:
        nuid = subject[len(prefix):]
        if nuid in named:
            continue
        try:
            async with asyncio.timeout(conn.deadlines.api_s):
                last = await conn.js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            continue
        if last.time is not None:
            out.append(residue.Chunks(nuid=nuid, written_at=last.time))
    return out


async def _mail(conn: bus.Conn) -> tuple[set[str] | None, set[str]]:
    """The attempts keys and body names of every message in MAIL (a work queue takes no
    second consumer: read by sequence, one existing message per request); None when it
    holds more than `MAX_LIVE`."""
    stream = conn.names.mail_stream
    async with asyncio.timeout(conn.deadlines.api_s):
        state = (await conn.js.stream_info(stream)).state
    keys: set[str] = set()
    bodies: set[str] = set()
    if state.messages > MAX_LIVE:
        return None, bodies
    seq = max(1, state.first_seq)
    for _ in range(state.messages + 1):
        try:
            async with asyncio.timeout(conn.deadlines.api_s):
                raw = await conn.js.get_msg(stream, seq=seq, subject=conn.names.mail_filter(),
                                            next=True)
        except nats.js.errors.NotFoundError:
            break
        try:
            env = mail.envelope_decoder.decode(raw.data or b"")
        except msgspec.DecodeError:
            env = None
        if env is not None:
            keys.add(mail.attempts_key(env))
            if env.body_ref is not None:
                bodies.add(env.body_ref.name)
        seq = (raw.seq or seq) + 1
    return keys, bodies


async def _kept_bodies(conn: bus.Conn) -> set[str] | None:
    """The body names dead letters and caught copies refer to; None when either stream
    holds more than `MAX_LIVE`."""
    out: set[str] = set()
    decoders: list[tuple[str, str, msgspec.json.Decoder[Any]]] = [
        (conn.names.dead_stream, conn.names.dead_filter(), _dead_decoder),
        (conn.names.caught_stream, conn.names.caught_filter(), _caught_decoder)]
    for stream, subject, decoder in decoders:
        async with asyncio.timeout(conn.deadlines.api_s):
            if (await conn.js.stream_info(stream)).state.messages > MAX_LIVE:
                return None
        for stored in await scanning.scan(conn, stream, subject, limit=MAX_LIVE):
            try:
                env: mail.Envelope = decoder.decode(stored.data).envelope
            except msgspec.DecodeError:
                continue
            if env.body_ref is not None:
                out.add(env.body_ref.name)
    return out
