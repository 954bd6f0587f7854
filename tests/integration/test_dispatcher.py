"""The dispatcher against a real nats-server and real aiosmtpd upstreams: each mail's fate,
retries on podpost's own schedule, dead letters and the catcher sink."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from typing import Any

import msgspec
import nats.js.errors
import pytest
from nats.js.object_store import ObjectStore

from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import events, mail, names, snapshot
from tests.support import dispatching as d

UP = "mail/up"
POLICY = "apps/web"


async def test_a_mail_is_delivered_once_and_acked(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """A queued mail reaches the upstream exactly once, leaves the stream, and a
    `delivered` event says so."""
    policy = d.policy_view(POLICY, UP)
    await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, upstream)])
    env = d.envelope(policy, ["you@example.org"])
    async with d.recording_events(conn) as seen, d.dispatcher(d.config(nats_settings)):
        await d.queue(conn, env)
        received = await upstream.handler.wait_for(1)
        await d.eventually(lambda: d.drained(conn))
        await d.eventually(lambda: bool(d.of_kind(seen, events.Delivered)))
    assert [(r.mail_from, r.rcpt_to, r.data) for r in received] == [
        ("app@example.org", ["you@example.org"], d.BODY)]
    delivered = d.of_kind(seen, events.Delivered)
    assert [(e.mail_id, e.policy, e.upstream, e.attempt, e.code, e.rcpt_to)
            for e in delivered] == [(env.id, POLICY, UP, 1, 250, ["you@example.org"])]
    assert [e.attempt for e in d.of_kind(seen, events.Attempted)] == [1]
    assert len(upstream.handler.messages) == 1


async def test_the_catcher_keeps_the_mail(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """A policy whose sink is the catcher gets its mail on the CAUGHT stream, not sent."""
    policy = d.policy_view(POLICY, names.CATCHER)
    await d.publish_snapshot(conn, [policy], [])
    env = d.envelope(policy, ["you@example.org"])
    async with d.dispatcher(d.config(nats_settings)):
        await d.queue(conn, env)
        await d.eventually(lambda: d.drained(conn))
    caught = await d.stored(conn, conn.names.caught_stream, mail.Caught)
    assert [c.envelope for c in caught] == [env]


async def test_a_body_from_the_object_store_is_sent_byte_identical_then_deleted(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """A body too big to travel inline is read from the BODIES store, delivered byte for
    byte, and its object deleted once the mail is acked."""
    policy = d.policy_view(POLICY, UP)
    await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, upstream)])
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    body = d.BODY + line * 8000  # ~580 KiB
    store = await bus.bodies(conn)
    env = d.envelope(policy, ["you@example.org"], body=None)
    await store.put(env.id, body)
    env = msgspec.structs.replace(env, size=len(body), body_ref=mail.BodyRef(
        name=env.id, size=len(body), sha256=hashlib.sha256(body).hexdigest()))
    async with d.dispatcher(d.config(nats_settings)):
        await d.queue(conn, env)
        received = await upstream.handler.wait_for(1)
        await d.eventually(lambda: d.drained(conn))
        await d.eventually(lambda: _gone(store, env.id))
    assert received[0].data == body


async def test_a_flaky_upstream_gets_the_mail_once_after_counted_retries(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """451 twice, then 250: two deferrals on podpost's schedule, then delivered exactly
    once on the third attempt; the attempt record is gone afterwards."""
    upstream.handler.flaky = 2
    policy = d.policy_view(POLICY, UP)
    await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, upstream)])
    env = d.envelope(policy, ["you@example.org"])
    async with d.recording_events(conn) as seen, d.dispatcher(d.config(nats_settings)):
        await d.queue(conn, env)
        await upstream.handler.wait_for(1)
        await d.eventually(lambda: d.drained(conn))
        await d.eventually(lambda: bool(d.of_kind(seen, events.Delivered)))
    deferred = d.of_kind(seen, events.Deferred)
    assert [(e.attempt, e.code) for e in deferred] == [(1, 451), (2, 451)]
    assert all(0.2 <= e.retry_in_s <= 0.5 for e in deferred)
    assert [(e.attempt, e.code) for e in d.of_kind(seen, events.Delivered)] == [(3, 250)]
    assert len(upstream.handler.messages) == 1
    attempts = await bus.attempts_kv(conn)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await attempts.get(mail.attempts_key(env))


async def test_a_permanent_refusal_is_dead_lettered_at_once(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """A 550 makes a dead letter after the first attempt, with the code, the reply and
    the fate, and the mail leaves the queue."""
    policy = d.policy_view(POLICY, UP)
    await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, upstream)])
    env = d.envelope(policy, ["fail-550@example.org"])
    async with d.recording_events(conn) as seen, d.dispatcher(d.config(nats_settings)):
        await d.queue(conn, env)
        await d.eventually(lambda: d.drained(conn))
        await d.eventually(lambda: bool(d.of_kind(seen, events.Dead)))
    [letter] = await d.dead_letters(conn)
    assert (letter.envelope, letter.fate, letter.code, letter.attempts) == (
        env, "permanent", 550, 1)
    assert "refused by test upstream" in letter.reply
    assert letter.first_attempt_at is not None and letter.last_attempt_at is not None
    assert [(e.mail_id, e.fate, e.code) for e in d.of_kind(seen, events.Dead)] == [
        (env.id, "permanent", 550)]
    assert not d.of_kind(seen, events.Deferred)
    assert upstream.handler.messages == []


async def test_an_upstream_down_past_the_max_age_expires_the_mail(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """An upstream that refuses connections is retried until the mail is older than its
    max age (3 s here); then it is dead-lettered with fate ``expired``."""
    policy = d.policy_view(POLICY, UP)
    await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, ("127.0.0.1", _closed_port()))])
    env = d.envelope(policy, ["you@example.org"])
    async with d.recording_events(conn) as seen, d.dispatcher(d.config(nats_settings)):
        await d.queue(conn, env)
        await d.eventually(lambda: d.drained(conn), timeout_s=20.0)
    [letter] = await d.dead_letters(conn)
    assert (letter.envelope.id, letter.fate, letter.code) == (env.id, "expired", None)
    assert letter.attempts >= 3
    assert letter.attempts == len(d.of_kind(seen, events.Attempted))
    assert (letter.dead_at - env.received_at).total_seconds() >= 3.0
    assert all(e.attempt < letter.attempts for e in d.of_kind(seen, events.Deferred))


class _Recovering(upstream_mod.Handler):
    """Refuses ``later@`` with 451 for its first ``refusals`` RCPTs, then accepts it."""

    refusals: int = 2

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address.startswith("later@") and self.refusals > 0:
            self.refusals -= 1
            return "451 4.2.1 later, please"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


async def test_mixed_recipients_each_get_their_own_fate(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Accepted, permanently and temporarily refused recipients of one mail: the first is
    delivered once, the second dead-lettered alone, the third delivered after retries;
    the accepted one is never sent again."""
    up = await upstream_mod.start(_Recovering())
    try:
        policy = d.policy_view(POLICY, UP)
        await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, up)])
        env = d.envelope(policy, ["ok@example.org", "fail-550@example.org",
                                  "later@example.org"])
        async with d.recording_events(conn) as seen, d.dispatcher(d.config(nats_settings)):
            await d.queue(conn, env)
            await up.handler.wait_for(2)
            await d.eventually(lambda: d.drained(conn))
        assert [m.rcpt_to for m in up.handler.messages] == [
            ["ok@example.org"], ["later@example.org"]]
    finally:
        await up.close()
    [letter] = await d.dead_letters(conn)
    assert (letter.envelope.rcpt_to, letter.fate, letter.code) == (
        ["fail-550@example.org"], "permanent", 550)
    assert letter.envelope.id == env.id
    assert [(e.attempt, e.rcpt_to) for e in d.of_kind(seen, events.Delivered)] == [
        (1, ["ok@example.org"]), (3, ["later@example.org"])]
    assert [(e.attempt, e.rcpt_to) for e in d.of_kind(seen, events.Deferred)] == [
        (1, ["later@example.org"]), (2, ["later@example.org"])]


async def test_a_policy_login_comes_from_the_credentials_bucket(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """The policy names a CREDENTIALS key; the dispatcher logs in with what it holds."""
    handler = upstream_mod.AuthHandler(users={"alice": "s3cret-alice"})
    up = await upstream_mod.start(handler, auth_require_tls=False,
                                  authenticator=handler.authenticate)
    try:
        creds = await bus.credentials_kv(conn)
        await creds.put("apps__web-login", msgspec.json.encode(
            snapshot.Credentials(username="alice", password="s3cret-alice")))
        policy = d.policy_view(POLICY, UP, credentials="apps__web-login")
        await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, up)])
        async with d.dispatcher(d.config(nats_settings)):
            await d.queue(conn, d.envelope(policy, ["you@example.org"]))
            received = await handler.wait_for(1)
        assert received[0].login == "alice"
    finally:
        await up.close()


async def test_mail_for_an_unknown_upstream_is_held_without_counting_attempts(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """Mail queued for an upstream the snapshot does not know waits, not counted as an
    attempt, and is delivered once the upstream appears."""
    policy = d.policy_view(POLICY, UP)
    await d.publish_snapshot(conn, [policy], [])
    env = d.envelope(policy, ["you@example.org"])
    async with d.recording_events(conn) as seen, d.dispatcher(d.config(nats_settings)):
        await d.queue(conn, env)
        await asyncio.sleep(1.0)
        assert await d.queued(conn) == 1
        assert not d.of_kind(seen, events.Attempted)
        await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, upstream)])
        await upstream.handler.wait_for(1)
        await d.eventually(lambda: bool(d.of_kind(seen, events.Delivered)))
    assert [e.attempt for e in d.of_kind(seen, events.Delivered)] == [1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _gone(store: ObjectStore, name: str) -> bool:
    """The object's meta says it is deleted (or was never there). Not ``store.get``: a
    get racing the delete waits forever for chunks that were just purged."""
    try:
        await store.get_info(name)
    except nats.js.errors.NotFoundError:
        return True
    return False


async def test_a_message_that_is_no_envelope_is_terminated_and_the_next_mail_delivered(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """A message on a mail subject that does not decode as an `Envelope` is terminated
    (it leaves the stream, nothing is sent for it) and the mail queued after it is
    delivered."""
    policy = d.policy_view(POLICY, UP)
    await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, upstream)])
    env = d.envelope(policy, ["you@example.org"])
    async with d.dispatcher(d.config(nats_settings)):
        await conn.js.publish(conn.names.mail_subject(UP, POLICY), b"\x00 not an envelope")
        await d.queue(conn, env)
        received = await upstream.handler.wait_for(1)
        await d.eventually(lambda: d.drained(conn))
    assert [r.rcpt_to for r in received] == [["you@example.org"]]
    assert len(upstream.handler.messages) == 1
