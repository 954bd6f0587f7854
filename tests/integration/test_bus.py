"""The bus layout is ensured idempotently by every role."""

from __future__ import annotations

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
