"""``podpost trace`` and ``podpost caught`` through the real entry point: a mail sent
through the real ingress and retried by a dispatcher running in the test, and mail kept
by the catcher sink."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loadkit import inprocess
from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import events, names, snapshot
from tests.support import cli
from tests.support import dispatching as d
from tests.support import ingress as ingress_mod

POLICY = "apps/open"
UP = "mail/relay"
MESSAGE = (b"From: app@example.org\r\nTo: you@example.org\r\nSubject: retried once\r\n\r\n"
           b"hello through podpost\r\n")


async def test_trace_shows_a_retried_mail_from_accepted_to_delivered(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """A mail accepted by the ingress, refused once with 451 and then delivered is traced
    as accepted, attempted, deferred, attempted, delivered, as a table and as JSON."""
    upstream.handler.flaky = 1
    policy = d.policy_view(POLICY, UP)
    snap = snapshot.PolicySnapshot(
        generated_at=datetime.now(UTC), policies={POLICY: policy},
        upstreams={UP: d.upstream_view(UP, upstream)},
        routes=[snapshot.Route(network="127.0.0.1/32", policy=POLICY, source="pod:apps/a")],
        source="test")
    await inprocess.put_snapshot(conn, snap)
    async with d.recording_events(conn) as seen, d.dispatcher(d.config(nats_settings)), \
            inprocess.running(inprocess.make_settings(nats_settings)) as ingress:
        reply = await ingress_mod.send(ingress, "app@example.org", ["you@example.org"],
                                       MESSAGE)
        mail_id = reply.rsplit(" ", 1)[-1]
        await upstream.handler.wait_for(1)
        await d.eventually(lambda: bool(d.of_kind(seen, events.Delivered)))

    url = nats_settings.url
    traced = (await cli.podpost(url, "trace", mail_id, "--json")).json()
    assert [e["kind"] for e in traced] == [
        "accepted", "attempted", "deferred", "attempted", "delivered"]
    assert {(e["mail_id"], e["policy"], e["upstream"]) for e in traced[1:]} == {
        (mail_id, POLICY, UP)}
    assert [(e.get("attempt"), e.get("code")) for e in traced[2:]] == [
        (1, 451), (2, None), (2, 250)]

    table = await cli.podpost(url, "trace", mail_id, "--since", "1h")
    assert table.code == 0, table.err
    assert f"mail {mail_id}: 5 events" in table.out
    kinds = [word for line in table.out.splitlines() for word in line.split()
             if word in {"accepted", "attempted", "deferred", "delivered"}]
    assert kinds == ["accepted", "attempted", "deferred", "attempted", "delivered"]


async def test_caught_mail_is_listed_and_shown(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Mail for a catcher policy is listed (table and JSON) and shown by stream sequence
    or mail id: its headers and text, or the raw message."""
    policy = d.policy_view(POLICY, names.CATCHER)
    await d.publish_snapshot(conn, [policy], [])
    first = d.envelope(policy, ["you@example.org"], body=MESSAGE)
    second = d.envelope(policy, ["them@example.org", "more@example.org"])
    async with d.dispatcher(d.config(nats_settings)):
        await d.queue(conn, first)
        await d.eventually(lambda: d.drained(conn))
        await d.queue(conn, second)
        await d.eventually(lambda: d.drained(conn))

    url = nats_settings.url
    listed = (await cli.podpost(url, "caught", "list", "--json")).json()
    assert [(row["id"], row["mail_id"], row["policy"], row["rcpt_to"], row["subject"])
            for row in listed] == [
        (1, first.id, POLICY, ["you@example.org"], "retried once"),
        (2, second.id, POLICY, ["them@example.org", "more@example.org"], "hi")]

    table = await cli.podpost(url, "caught", "list")
    assert table.code == 0, table.err
    assert "2 caught mails" in table.out and "retried once" in table.out

    shown = await cli.podpost(url, "caught", "show", "1")
    assert shown.code == 0, shown.err
    assert "Subject:" in shown.out and "hello through podpost" in shown.out
    assert first.id in shown.out

    raw = await cli.podpost(url, "caught", "show", second.id, "--raw")
    assert raw.stdout == d.BODY


async def test_trace_orders_events_by_time_not_by_arrival(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Events stored out of order (the dispatcher's before the ingress's, an outcome
    before the attempt of the same instant) are traced by time, ties in life order."""
    at = datetime.now(UTC)
    later = at + timedelta(milliseconds=5)
    mail_id = "outoforder1"
    stored: list[events.AnyEvent] = [
        events.Delivered(mail_id=mail_id, at=later, attempt=2, code=250),
        events.Deferred(mail_id=mail_id, at=at, attempt=1, code=451, retry_in_s=1.0),
        events.Attempted(mail_id=mail_id, at=later, attempt=2),
        events.Attempted(mail_id=mail_id, at=at, attempt=1),
        events.Accepted(mail_id=mail_id, at=at),
    ]
    for event in stored:
        await conn.js.publish(conn.names.event_subject(events.kind_of(event)),
                              events.event_encoder.encode(event))
    traced = (await cli.podpost(nats_settings.url, "trace", mail_id, "--json")).json()
    assert [(e["kind"], e.get("attempt")) for e in traced] == [
        ("accepted", None), ("attempted", 1), ("deferred", 1), ("attempted", 2),
        ("delivered", 2)]
