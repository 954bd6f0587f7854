"""The connection to NATS JetStream, the idempotent "ensure the bus" every role runs, and
the bus reads more than one role needs.

Every role calls `connect` and then `ensure` (the layout and its idempotent creation are
`runtime.provisioning`). The operator's commands connect with the same options
(`connect_options`) but without reconnects (`podpost.commands.running`).

The reads written once here: the policy snapshot (`read_snapshot`), a stream's consumers
(`consumer_infos`) and a mail's body (`read_body`); a stream scan is `runtime.scanning`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerInfo,
)
from nats.js.kv import KeyValue
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE, ObjectStore

from runtime import provisioning
from runtime import settings as settings_mod
from schemas import mail, names
from schemas import snapshot as snapshot_mod

log = structlog.get_logger("podpost.bus")

T = TypeVar("T")

MAX_PAYLOAD_HINT = 1024 * 1024
CONSUMER_PAGE = 256
"""The server's page size for consumer lists (JetStream's API list limit)."""
MAX_CONSUMER_PAGES = 64
"""Bounds one consumer listing: 16,384 consumers."""


TRANSIENT: tuple[type[Exception], ...] = (nats.errors.Error, TimeoutError, OSError)
"""What a bus call raises when the broker is away, slow or restarting (nats-py's errors,
JetStream's API errors among them, a deadline, a socket error): the one set every role
catches around bus calls, to retry or to leave a message for redelivery. A site that
means more spells it ``(*bus.TRANSIENT, Other)``."""


_DEFAULT_DEADLINES = settings_mod.DeadlineSettings()


class LinkBroken(nats.errors.Error):
    """The connection to the broker broke (or came back) while a long read was in flight:
    the read was cut, as its subscription does not survive a broker restart. Transient."""


class Link:
    """The state of one connection as nats-py reports it (its disconnect and reconnect
    callbacks): whether it is up, and an Event that fires at its next change, so a long
    read (a body from the object store) is cut at once instead of hanging until its
    deadline after a broker restart."""

    def __init__(self) -> None:
        self.changes = 0
        self._up = asyncio.Event()
        self._up.set()
        self._changed = asyncio.Event()

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def changed(self) -> asyncio.Event:
        """Set at the next disconnect or reconnect (take it before the work it guards)."""
        return self._changed

    def went_down(self) -> None:
        self._up.clear()
        self._flip()

    def came_back(self) -> None:
        self._up.set()
        self._flip()

    async def wait_up(self, timeout_s: float) -> bool:
        """Until the connection is up, at most ``timeout_s``; whether it is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._up.wait()
        return self.is_up

    def _flip(self) -> None:
        self.changes += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


@dataclass(frozen=True)
class Conn:
    """A live connection and the handles every role uses."""

    nc: Client
    js: JetStreamContext
    names: names.Bus
    deadlines: settings_mod.DeadlineSettings = _DEFAULT_DEADLINES
    """The network deadlines of `settings_mod.NatsSettings.deadlines`."""
    link: Link = field(default_factory=Link)
    """Up or down, as the connection's callbacks last said (`open_connection` wires it)."""
    handles: dict[str, KeyValue | ObjectStore] = field(default_factory=dict, compare=False)
    """Bucket and object-store handles by name, looked up once (`_kv`, `bodies`): a
    lookup is a stream-info round trip, which a reconciler publishing a pod change or an
    ingress storing a body would otherwise pay on every call."""


async def ensure(conn: Conn, retention: names.Retention, replicas: int) -> None:
    """Create or update every stream, bucket and object store (`runtime.provisioning`);
    safe to run concurrently."""
    await provisioning.ensure(conn.js, conn.names, retention, replicas)


async def _kv(conn: Conn, bucket: str) -> KeyValue:
    """The bucket's handle; a bucket that is not there raises (and is looked up again)."""
    handle = conn.handles.get(bucket)
    if not isinstance(handle, KeyValue):
        handle = conn.handles[bucket] = await conn.js.key_value(bucket)
    return handle


async def policy_kv(conn: Conn) -> KeyValue:
    return await _kv(conn, conn.names.policy_bucket)


async def routes_kv(conn: Conn) -> KeyValue:
    return await _kv(conn, conn.names.routes_bucket)


async def credentials_kv(conn: Conn) -> KeyValue:
    return await _kv(conn, conn.names.credentials_bucket)


async def attempts_kv(conn: Conn) -> KeyValue:
    return await _kv(conn, conn.names.attempts_bucket)


async def rates_kv(conn: Conn) -> KeyValue:
    return await _kv(conn, conn.names.rates_bucket)


async def control_kv(conn: Conn) -> KeyValue:
    return await _kv(conn, conn.names.control_bucket)


async def bodies(conn: Conn) -> ObjectStore:
    bucket = conn.names.bodies_bucket
    handle = conn.handles.get(bucket)
    if not isinstance(handle, ObjectStore):
        handle = conn.handles[bucket] = await conn.js.object_store(bucket)
    return handle


def server_urls(cfg: settings_mod.NatsSettings) -> list[str]:
    """The servers of ``nats.url``, a comma-separated list."""
    return [url.strip() for url in cfg.url.split(",") if url.strip()]


def connect_options(cfg: settings_mod.NatsSettings, default_name: str) -> dict[str, Any]:
    """What every connection to NATS says, a role's or a command's: the servers, the
    client name and the login (user and password, or a credentials file)."""
    options: dict[str, Any] = {"servers": server_urls(cfg), "name": cfg.name or default_name}
    if cfg.user is not None:
        options["user"] = cfg.user
        options["password"] = cfg.password or ""
    if cfg.creds_file is not None:
        options["user_credentials"] = cfg.creds_file
    return options


def conn_for(nc: Client, cfg: settings_mod.NatsSettings, link: Link | None = None) -> Conn:
    """The handles of a connection made with ``cfg`` (``link``: its callbacks' state)."""
    return Conn(nc=nc, js=nc.jetstream(timeout=cfg.deadlines.api_s),
                names=names.Bus(prefix=cfg.prefix), deadlines=cfg.deadlines,
                link=link or Link())


async def _connect_once(cfg: settings_mod.NatsSettings, role: str, link: Link) -> Client:
    async def on_error(exc: Exception) -> None:
        log.warning("bus.error_reported", error=str(exc) or type(exc).__name__)

    async def on_disconnect() -> None:
        link.went_down()
        log.warning("bus.disconnected")

    async def on_reconnect() -> None:
        link.came_back()
        log.info("bus.reconnected")

    return await nats.connect(
        # Replies come back on a per-role prefix, so NATS permissions can keep one role
        # from reading another's (see podpost.natsconfig).
        inbox_prefix=names.inbox_prefix(names.Bus(prefix=cfg.prefix), role),
        connect_timeout=max(1, int(cfg.connect_timeout_s)),
        reconnect_time_wait=1,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        **connect_options(cfg, f"podpost-{role}"),
    )


async def open_connection(
    cfg: settings_mod.NatsSettings, role: str, *, attempts: int | None = None
) -> Conn:
    """Connect, retrying the first connection as nats-py does not (`attempts`: None =
    until cancelled). Later disconnects are retried by nats-py itself, forever."""
    tried = 0
    delay = 0.2
    link = Link()
    while True:
        tried += 1
        try:
            nc = await _connect_once(cfg, role, link)
            break
        except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
            if attempts is not None and tried >= attempts:
                raise
            log.warning("bus.connect_failed", url=cfg.url, attempt=tried,
                        error=str(exc) or type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    return conn_for(nc, cfg, link)


async def _ensure_retrying(conn: Conn, replicas: int, attempts: int | None) -> None:
    """`ensure`, retried (like the first connection) while JetStream is slow or not yet
    available: a fresh cluster elects its leaders, and creating replicated streams while
    every role starts at once can outlast one request's timeout."""
    tried = 0
    delay = 0.5
    while True:
        tried += 1
        try:
            await ensure(conn, names.Retention(), replicas)
            return
        except (TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            if attempts is not None and tried >= attempts:
                raise
            log.warning("bus.ensure_failed", attempt=tried,
                        error=str(exc) or type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@contextlib.asynccontextmanager
async def connect(
    cfg: settings_mod.NatsSettings, role: str, *, attempts: int | None = None,
    ensure_bus: bool = True,
) -> AsyncIterator[Conn]:
    """A connection for the life of the block, with the bus ensured; closed on exit."""
    conn = await open_connection(cfg, role, attempts=attempts)
    try:
        if ensure_bus:
            await _ensure_retrying(conn, cfg.replicas, attempts)
        yield conn
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(conn.deadlines.close_s):
                await conn.nc.close()


BODY_READ_TRIES = 3
"""A body read cut by a broken link is started again (once the link is up) this often."""


async def read_body(
    store: ObjectStore, env: mail.Envelope, timeout_s: float, link: Link | None = None
) -> bytes | None:
    """The stored message of an envelope: inline, or from the BODIES object store within
    ``timeout_s``; None when it has none or its object is gone (never stored, or deleted).

    With ``link``, a read in flight when the connection breaks or comes back is cut at
    once and started again when the link is up (`BODY_READ_TRIES` in all, within the same
    ``timeout_s``): its subscription does not survive a broker restart, and nats-py's own
    reader then hangs. Other broker errors (`TRANSIENT`, `LinkBroken` among them) are the
    caller's to handle."""
    if env.body is not None:
        return env.body
    if env.body_ref is None:
        return None
    try:
        async with asyncio.timeout(timeout_s):
            for tried in range(1, BODY_READ_TRIES + 1):
                if link is None:
                    return await _read_object(store, env.body_ref.name)
                await link.wait_up(timeout_s)
                try:
                    return await unless_link_changes(
                        _read_object(store, env.body_ref.name), link.changed())
                except LinkBroken:
                    log.warning("bus.body_read_cut", tried=tried)
            raise LinkBroken(f"the link broke {BODY_READ_TRIES} times during one body read")
    except nats.js.errors.NotFoundError:  # ObjectNotFoundError, ObjectDeletedError
        return None


async def unless_link_changes(work_: Coroutine[Any, Any, T], changed: asyncio.Event) -> T:
    """``work_``, cut (`LinkBroken`) when ``changed`` (`Link.changed`) fires first: a
    request whose reply a broker restart lost is not waited for to its deadline. No task
    outlives the call."""
    work: asyncio.Task[T] = asyncio.ensure_future(work_)
    watch = asyncio.ensure_future(changed.wait())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, watch):
            task.cancel()
        await asyncio.gather(work, watch, return_exceptions=True)
    if work.cancelled():
        raise LinkBroken("the link changed while waiting for the broker")
    return work.result()


async def _read_object(store: ObjectStore, name: str) -> bytes:
    """One object's bytes, as nats-py's ``ObjectStore.get`` reads them (its info, then its
    chunks from an ordered consumer, the digest checked) but with the chunk subscription
    always removed, also when the read is cut."""
    info = await store.get_info(name)
    if not info.size:
        return b""
    bucket = store._name
    sub = await store._js.subscribe(
        OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=info.nuid), ordered_consumer=True,
        stream=OBJ_STREAM_TEMPLATE.format(bucket=bucket))
    try:
        digest = hashlib.sha256()
        parts: list[bytes] = []
        async for msg in sub.messages:
            parts.append(msg.data)
            digest.update(msg.data)
            if msg.metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(*TRANSIENT):
            await sub.unsubscribe()
    want = (info.digest or "").partition("=")[2]
    if base64.urlsafe_b64decode(want + "=" * (-len(want) % 4)) != digest.digest():
        raise nats.js.errors.DigestMismatchError
    return b"".join(parts)


async def consumer_infos(conn: Conn, stream: str | None = None) -> list[ConsumerInfo]:
    """Every consumer of ``stream`` (the MAIL stream by default), paged by what came back:
    the next page starts after the consumers already read, and a short or empty page is
    the last one; at most `MAX_CONSUMER_PAGES` requests, each within ``api_s``."""
    name = conn.names.mail_stream if stream is None else stream
    infos: list[ConsumerInfo] = []
    for _ in range(MAX_CONSUMER_PAGES):
        async with asyncio.timeout(conn.deadlines.api_s):
            page = await conn.js.consumers_info(name, offset=len(infos))
        infos.extend(page)
        if len(page) < CONSUMER_PAGE:
            break
    return infos


@dataclass(frozen=True)
class StoredSnapshot:
    """What the POLICY bucket holds: the snapshot and its KV revision (0: none stored)."""

    snapshot: snapshot_mod.PolicySnapshot | None
    revision: int = 0
    error: str | None = None
    """Why a stored snapshot (``revision``) could not be decoded; None when it could, or
    when it was not decoded at all (no snapshot, or the revision the caller knows)."""


async def read_snapshot(conn: Conn, kv: KeyValue | None = None, *, known_revision: int = 0
                        ) -> StoredSnapshot:
    """The policy snapshot (within ``kv_s``), decoded unless its revision is
    ``known_revision``: then only the revision is returned, as nothing changed."""
    if kv is None:
        kv = await policy_kv(conn)
    try:
        async with asyncio.timeout(conn.deadlines.kv_s):
            entry = await kv.get(conn.names.snapshot_key)
    except nats.js.errors.KeyNotFoundError:
        return StoredSnapshot(None)
    if entry.value is None or entry.revision is None:
        return StoredSnapshot(None)
    if known_revision and entry.revision == known_revision:
        return StoredSnapshot(None, entry.revision)
    try:
        return StoredSnapshot(snapshot_mod.decode_snapshot(entry.value), entry.revision)
    except msgspec.DecodeError as exc:
        return StoredSnapshot(None, entry.revision, str(exc))
