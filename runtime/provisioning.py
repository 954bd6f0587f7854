"""The bus layout as JetStream configs, and the idempotent "ensure the bus" every role runs.

Whoever starts first creates the streams, buckets and object store; the rest find them. A
changed setting (retention, replicas) is applied with an update, never by deleting data.
`runtime.bus.ensure` runs it on a connection."""

from __future__ import annotations

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from schemas import names

log = structlog.get_logger("podpost.bus")

DAY = 86400.0


def _stream(name: str, description: str, subject: str, *, replicas: int,
            duplicate_window: float, work_queue: bool = False, max_age: float = 0.0,
            max_msgs: int = -1) -> StreamConfig:
    """A file stream on one subject filter: a work queue refuses new messages when full,
    a limits stream drops its oldest."""
    return StreamConfig(
        name=name, description=description, subjects=[subject],
        retention=RetentionPolicy.WORK_QUEUE if work_queue else RetentionPolicy.LIMITS,
        storage=StorageType.FILE, num_replicas=replicas, max_age=max_age, max_msgs=max_msgs,
        duplicate_window=duplicate_window,
        discard=DiscardPolicy.NEW if work_queue else DiscardPolicy.OLD,
    )


def stream_configs(
    bus: names.Bus, retention: names.Retention, replicas: int
) -> list[StreamConfig]:
    """The streams of docs/architecture.md ("The bus"), the catcher's included, as data."""
    window = retention.duplicate_window_s
    return [
        _stream(bus.mail_stream,
                "podpost: mail waiting for delivery, one subject per upstream+policy",
                bus.mail_filter(), replicas=replicas, duplicate_window=window,
                work_queue=True),
        _stream(bus.dead_stream, "podpost: dead letters, for dlq list/show/replay/purge",
                bus.dead_filter(), replicas=replicas, duplicate_window=window,
                max_age=retention.dead_days * DAY),
        _stream(bus.events_stream,
                "podpost: what happened to every mail, for trace and metrics",
                bus.events_filter(), replicas=replicas, duplicate_window=120.0,
                max_age=retention.events_days * DAY),
        _stream(bus.caught_stream, "podpost: mail kept by the catcher sink",
                bus.caught_filter(), replicas=replicas, duplicate_window=window,
                max_age=retention.caught_days * DAY, max_msgs=retention.caught_max_msgs),
    ]


def _bucket(bucket: str, description: str, *, replicas: int, history: int = 1,
            ttl: float | None = None) -> KeyValueConfig:
    return KeyValueConfig(bucket=bucket, description=description, history=history,
                          ttl=ttl, storage=StorageType.FILE, replicas=replicas)


def kv_configs(bus: names.Bus, retention: names.Retention, replicas: int) -> list[KeyValueConfig]:
    return [
        _bucket(bus.policy_bucket, "podpost: the policy snapshot (revision = KV revision)",
                history=5, replicas=replicas),
        _bucket(bus.routes_bucket,
                "podpost: client network -> policy, one key per network; written by "
                "the reconciler key by key, mirrored by every ingress", replicas=replicas),
        _bucket(bus.credentials_bucket,
                "podpost: upstream logins; written by the reconciler, read by dispatchers",
                replicas=replicas),
        _bucket(bus.attempts_bucket, "podpost: per-mail attempt counts and settled recipients",
                ttl=retention.attempts_days * DAY, replicas=replicas),
        _bucket(bus.rates_bucket,
                "podpost: per-policy rate-limit windows, updated by compare-and-swap",
                ttl=retention.rates_ttl_s, replicas=replicas),
        _bucket(bus.control_bucket,
                "podpost: suspended upstreams, held mails, moves under way; "
                "written by podpost queue, watched by dispatchers", replicas=replicas),
    ]


def object_store_config(
    bus: names.Bus, retention: names.Retention, replicas: int
) -> ObjectStoreConfig:
    return ObjectStoreConfig(
        bucket=bus.bodies_bucket,
        description="podpost: bodies over the inline limit, keyed by mail id",
        ttl=retention.bodies_days * DAY,
        storage=StorageType.FILE,
        replicas=replicas,
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
            log.info("bus.stream_created", stream=config.name)
            return
        except nats.js.errors.BadRequestError:
            # Another role created it between our two calls; fall through to compare.
            info = await js.stream_info(config.name)
    current = info.config
    wanted = (config.subjects, config.max_age, config.num_replicas, config.duplicate_window,
              config.max_msgs)
    have = (current.subjects, current.max_age, current.num_replicas, current.duplicate_window,
            current.max_msgs)
    if wanted != have:
        await js.update_stream(config)
        log.info("bus.stream_updated", stream=config.name)


async def ensure(js: JetStreamContext, bus: names.Bus, retention: names.Retention,
                 replicas: int) -> None:
    """Create or update every stream, bucket and object store; safe to run concurrently."""
    for config in stream_configs(bus, retention, replicas):
        await _ensure_stream(js, config)
    for kv in kv_configs(bus, retention, replicas):
        try:
            await js.key_value(kv.bucket)
        except nats.js.errors.BucketNotFoundError:
            await js.create_key_value(kv)
            log.info("bus.bucket_created", bucket=kv.bucket)
    store = object_store_config(bus, retention, replicas)
    try:
        await js.object_store(bus.bodies_bucket)
    except nats.js.errors.BucketNotFoundError:
        await js.create_object_store(bus.bodies_bucket, config=store)
        log.info("bus.bucket_created", bucket=store.bucket)
