"""The bus layout is ensured idempotently by every role."""

from __future__ import annotations

from nats.js.api import AckPolicy, ConsumerConfig

from runtime import bus, settings


async def test_ensure_is_idempotent_and_creates_the_layout(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """A second role ensuring the same bus finds everything and changes nothing."""
    async with bus.connect(nats_settings, "second", attempts=3) as second:
        names = second.names
        for stream in (names.mail_stream, names.dead_stream, names.events_stream,
                       names.caught_stream):
            info = await second.js.stream_info(stream)
            assert info.config.name == stream
        mail = await second.js.stream_info(names.mail_stream)
        assert mail.config.duplicate_window == 3600.0
        await bus.policy_kv(second)
        await bus.credentials_kv(second)
        await bus.attempts_kv(second)
        await bus.bodies(second)


async def test_consumer_infos_lists_every_consumer_across_pages(conn: bus.Conn) -> None:
    """The consumer listing reads past the server's first page and lists each consumer once."""
    stream = conn.names.dead_stream
    wanted = {f"listed-{i}" for i in range(bus.CONSUMER_PAGE + 20)}
    for name in sorted(wanted):
        await conn.js.add_consumer(stream, ConsumerConfig(
            name=name, ack_policy=AckPolicy.NONE, mem_storage=True, num_replicas=1,
            inactive_threshold=60.0))
    listed = [info.name for info in await bus.consumer_infos(conn, stream)]
    assert sorted(listed) == sorted(wanted)


async def test_consumer_infos_of_a_stream_without_consumers_is_empty(conn: bus.Conn) -> None:
    """Listing the consumers of a stream that has none returns nothing."""
    assert await bus.consumer_infos(conn, conn.names.caught_stream) == []
