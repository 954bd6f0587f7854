"""``podpost dlq`` through its real entry point, against a real nats-server, real aiosmtpd
upstreams and a dispatcher running in the test: list and show, replay after the upstream
is fixed (delivered once, inline and object-store bodies), re-routing, and purge."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import nats.js.errors
from aiosmtpd.smtp import SMTP, Envelope, Session

from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import events, mail
from tests.support import cli
from tests.support import dispatching as d

UP = "mail/up"
GOOD = "mail/good"
POLICY = "apps/web"
BIG = d.BODY + b"0123456789abcdefghijklmnopqrstuvwxyz\r\n" * 8000  # ~300 KiB


@dataclass
class Switch(upstream_mod.Handler):
    """An upstream that refuses every recipient with 550 until it is fixed."""

    broken: bool = True

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.broken:
            return "550 5.1.1 no such mailbox (test upstream is broken)"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


async def big_envelope(conn: bus.Conn, policy: str = POLICY, upstream: str = UP,
                       name: str | None = None) -> mail.Envelope:
    """An envelope whose body is in the BODIES object store, as ingress stores it."""
    env = d.envelope(d.policy_view(policy, upstream), ["you@example.org"], body=None)
    ref = mail.BodyRef(name=name or env.id, size=len(BIG), sha256=hashlib.sha256(BIG).hexdigest())
    store = await bus.bodies(conn)
    await store.put(ref.name, BIG)
    return msgspec.structs.replace(env, size=len(BIG), body_ref=ref)


async def publish_dead(conn: bus.Conn, env: mail.Envelope, *, age: timedelta = timedelta()
                       ) -> int:
    """A dead letter as the dispatcher writes it; its DEAD sequence."""
    at = datetime.now(UTC) - age
    letter = mail.DeadLetter(envelope=env, fate="permanent", reason="refused", code=550,
                             reply="5.1.1 no such mailbox", attempts=1, dead_at=at)
    ack = await conn.js.publish(conn.names.dead_subject(env.upstream),
                                msgspec.json.encode(letter))
    return ack.seq


async def is_gone(conn: bus.Conn, name: str) -> bool:
    store = await bus.bodies(conn)
    try:
        await store.get_info(name)
    except nats.js.errors.NotFoundError:
        return True
    return False


async def test_dead_letters_are_listed_shown_and_replayed_once_after_the_fix(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Mail refused with 550 is listed (table and JSON) and shown (details and the raw
    message); once the upstream is fixed, ``replay --all`` delivers each exactly once,
    an object-store body too, removes the dead letters and their bodies, and replaying
    again queues nothing."""
    switch = Switch()
    up = await upstream_mod.start(switch)
    url = nats_settings.url
    try:
        policy = d.policy_view(POLICY, UP)
        await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, up)])
        small = d.envelope(policy, ["you@example.org"])
        big = await big_envelope(conn)
        async with d.recording_events(conn) as seen, d.dispatcher(d.config(nats_settings)):
            await d.queue(conn, small)
            await d.queue(conn, big)
            await d.eventually(lambda: len(d.of_kind(seen, events.Dead)) == 2)

            listed = (await cli.podpost(url, "dlq", "list", "--json")).json()
            assert [(row["policy"], row["upstream"], row["code"], row["attempts"],
                     row["mail_from"], row["rcpt_to"]) for row in listed] == [
                (POLICY, UP, 550, 1, "app@example.org", ["you@example.org"])] * 2
            assert {row["mail_id"] for row in listed} == {small.id, big.id}
            assert all(row["reason"] and row["dead_at"] for row in listed)
            seq_of = {row["mail_id"]: row["id"] for row in listed}

            table = await cli.podpost(url, "dlq", "list", "--upstream", UP, "--since", "1h")
            assert table.code == 0, table.err
            assert "2 dead letters" in table.out
            assert small.id in table.out and big.id in table.out

            shown = await cli.podpost(url, "dlq", "show", str(seq_of[big.id]))
            assert shown.code == 0, shown.err
            assert "550" in shown.out and "no such mailbox" in shown.out
            assert "object store" in shown.out and big.id in shown.out
            raw = await cli.podpost(url, "dlq", "show", big.id, "--raw")
            assert raw.stdout == BIG

            switch.broken = False
            replayed = await cli.podpost(url, "dlq", "replay", "--all")
            assert replayed.code == 0, replayed.err
            assert "replayed 2 dead letters" in replayed.out
            assert replayed.out.count("queued") == 2

            received = await switch.wait_for(2)
            await d.eventually(lambda: d.drained(conn))
            await d.eventually(lambda: len(d.of_kind(seen, events.Delivered)) == 2)
            assert sorted(r.data for r in received) == sorted([d.BODY, BIG])
            assert await d.dead_letters(conn) == []
            copy = f"{big.id}.replay.{seq_of[big.id]}"
            await d.eventually(lambda: is_gone(conn, copy))  # the dispatcher's, on delivery
            assert await is_gone(conn, big.id)  # the original, released by the replay

            again = await cli.podpost(url, "dlq", "replay", str(seq_of[small.id]))
            assert again.code == 0, again.err
            assert "already" in again.err
            assert await d.queued(conn) == 0
        assert len(switch.messages) == 2
        replays = d.of_kind(seen, events.Replayed)
        assert sorted((e.mail_id, e.dead_seq, e.to_upstream) for e in replays) == sorted(
            [(small.id, seq_of[small.id], UP), (big.id, seq_of[big.id], UP)])
    finally:
        await up.close()


async def test_replay_to_another_upstream(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """``--dry-run`` queues nothing; ``--to-upstream`` sends the mail to the named
    upstream instead of the one that refused it; an upstream the snapshot does not know
    is refused before anything is done."""
    switch = Switch()
    broken = await upstream_mod.start(switch)
    url = nats_settings.url
    try:
        policy = d.policy_view(POLICY, UP)
        await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, broken),
                                                  d.upstream_view(GOOD, upstream)])
        env = d.envelope(policy, ["you@example.org"])
        seq = await publish_dead(conn, env)

        dry = await cli.podpost(url, "dlq", "replay", str(seq), "--to-upstream", GOOD,
                                "--dry-run", "--json")
        assert [(r["seq"], r["outcome"], r["to_upstream"]) for r in dry.json()] == [
            (seq, "planned", GOOD)]
        unknown = await cli.podpost(url, "dlq", "replay", str(seq), "--to-upstream", "mail/nope")
        assert "mail/nope is not in the policy snapshot" in cli.one_line_error(unknown)
        assert await d.queued(conn) == 0

        async with d.recording_events(conn) as seen, d.dispatcher(d.config(nats_settings)):
            moved = await cli.podpost(url, "dlq", "replay", env.id, "--to-upstream", GOOD,
                                      "--json")
            assert [(r["outcome"], r["from_upstream"], r["to_upstream"]) for r in moved.json()
                    ] == [("queued", UP, GOOD)]
            received = await upstream.handler.wait_for(1)
            await d.eventually(lambda: bool(d.of_kind(seen, events.Delivered)))
        assert [(r.rcpt_to, r.data) for r in received] == [(["you@example.org"], d.BODY)]
        assert switch.messages == [] and switch.connections == 0
        [delivered] = d.of_kind(seen, events.Delivered)
        assert (delivered.mail_id, delivered.upstream) == (env.id, GOOD)
    finally:
        await broken.close()


async def test_purge_removes_dead_letters_and_the_bodies_nothing_else_needs(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Purging one of two dead letters sharing a body object keeps the body; ``--older-than``
    spares younger ones; purging the rest deletes the body; each purge is an event."""
    url = nats_settings.url
    first = await big_envelope(conn)
    second = msgspec.structs.replace(first, rcpt_to=["other@example.org"])
    inline = d.envelope(d.policy_view(POLICY, UP), ["third@example.org"])
    seqs = [await publish_dead(conn, env) for env in (first, second, inline)]
    old = await publish_dead(conn, d.envelope(d.policy_view(POLICY, UP), ["x@example.org"]),
                             age=timedelta(hours=3))
    assert first.body_ref is not None
    body = first.body_ref.name

    one = await cli.podpost(url, "dlq", "purge", str(seqs[0]), "--json")
    assert [(r["seq"], r["outcome"], r["body"]) for r in one.json()] == [
        (seqs[0], "purged", "kept")]
    assert not await is_gone(conn, body)

    aged = await cli.podpost(url, "dlq", "purge", "--all", "--older-than", "2h")
    assert aged.code == 0, aged.err
    assert "purged 1 dead letter" in aged.out and str(old) in aged.out

    rest = await cli.podpost(url, "dlq", "purge", "--all", "--json")
    assert sorted((r["seq"], r["body"]) for r in rest.json()) == [
        (seqs[1], "deleted"), (seqs[2], "none")]
    assert await d.dead_letters(conn) == []
    assert await is_gone(conn, body)

    purged = await d.stored(conn, conn.names.events_stream, events.AnyEvent)
    assert sorted(e.dead_seq for e in purged if isinstance(e, events.Purged)) == sorted(
        [*seqs, old])
