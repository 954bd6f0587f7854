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


def stream_configs(
    bus: names.Bus, retention: names.Retention, replicas: int
) -> list[StreamConfig]:
    """The streams of docs/architecture.md ("The bus"), the catcher's included, as data."""
    return [
        StreamConfig(
            name=bus.mail_stream,
            description="podpost: mail waiting for delivery, one subject per upstream+policy",
            subjects=[bus.mail_filter()],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=0.0,
            max_msgs=-1,
            duplicate_window=retention.duplicate_window_s,
            discard=DiscardPolicy.NEW,
        ),
        StreamConfig(
            name=bus.dead_stream,
            description="podpost: dead letters, for dlq list/show/replay/purge",
            subjects=[bus.dead_filter()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=retention.dead_days * DAY,
            max_msgs=-1,
            duplicate_window=retention.duplicate_window_s,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=bus.events_stream,
            description="podpost: what happened to every mail, for trace and metrics",
            subjects=[bus.events_filter()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=retention.events_days * DAY,
            max_msgs=-1,
            duplicate_window=120.0,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=bus.caught_stream,
            description="podpost: mail kept by the catcher sink",
            subjects=[bus.caught_filter()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=retention.caught_days * DAY,
            max_msgs=retention.caught_max_msgs,
            duplicate_window=retention.duplicate_window_s,
            discard=DiscardPolicy.OLD,
        ),
    ]


def kv_configs(bus: names.Bus, retention: names.Retention, replicas: int) -> list[KeyValueConfig]:
    return [
        KeyValueConfig(
            bucket=bus.policy_bucket,
            description="podpost: the policy snapshot (revision = KV revision)",
            history=5,
            storage=StorageType.FILE,
            replicas=replicas,
        ),
        KeyValueConfig(
            bucket=bus.routes_bucket,
            description="podpost: client network -> policy, one key per network; written by "
                        "the reconciler key by key, mirrored by every ingress",
            history=1,
            storage=StorageType.FILE,
            replicas=replicas,
        ),
        KeyValueConfig(
            bucket=bus.credentials_bucket,
            description="podpost: upstream logins; written by the reconciler, read by dispatchers",
            history=1,
            storage=StorageType.FILE,
            replicas=replicas,
        ),
        KeyValueConfig(
            bucket=bus.attempts_bucket,
            description="podpost: per-mail attempt counts and settled recipients",
            history=1,
            ttl=retention.attempts_days * DAY,
            storage=StorageType.FILE,
            replicas=replicas,
        ),
        KeyValueConfig(
            bucket=bus.rates_bucket,
            description="podpost: per-policy rate-limit windows, updated by compare-and-swap",
            history=1,
            ttl=retention.rates_ttl_s,
            storage=StorageType.FILE,
            replicas=replicas,
        ),
        KeyValueConfig(
            bucket=bus.control_bucket,
            description="podpost: suspended upstreams, held mails, moves under way; "
                        "written by podpost queue, watched by dispatchers",
            history=1,
            storage=StorageType.FILE,
            replicas=replicas,
        ),
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
