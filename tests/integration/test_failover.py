"""Failover before any attempt: a suspended primary's mail and mail over the primary's
quota go to the policy's fallback (with the fallback's own login), attempting nothing
on the primary; the last upstream of the chain keeps its mail."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import control, events, names, snapshot
from tests.support import dispatching as d

RETRY = snapshot.RetryOverride(min_delay_s=0.2, max_delay_s=0.3, max_age_s=120.0)


async def _suspend(conn: bus.Conn, upstream: str) -> None:
    kv = await bus.control_kv(conn)
    await kv.put(names.suspend_key(upstream), control.encoder.encode(control.Suspension(
        upstream=upstream, since=datetime.now(UTC), reason="maintenance")))


async def test_a_suspended_primarys_mail_goes_to_the_fallback(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """With the primary suspended, queued mail is moved to the fallback and delivered
    there once; the primary sees no session at all."""
    primary, backup = upstream_mod.Handler(), upstream_mod.Handler()
    up_p, up_b = await upstream_mod.start(primary), await upstream_mod.start(backup)
    try:
        pol = d.policy_view("apps/a", "mail/primary", retry=RETRY,
                            fallbacks=[snapshot.Fallback(upstream="mail/backup")])
        await d.publish_snapshot(conn, [pol], [d.upstream_view("mail/primary", up_p),
                                               d.upstream_view("mail/backup", up_b)])
        await _suspend(conn, "mail/primary")
        envs = [d.envelope(pol, [f"m-{i}@example.org"]) for i in range(3)]
        for env in envs:
            await d.queue(conn, env)
        async with d.recording_events(conn) as seen, d.dispatcher(d.config(nats_settings)):
            await backup.wait_for(3)
            await d.eventually(lambda: d.drained(conn))
    finally:
        await up_p.close()
        await up_b.close()
    assert sorted(m.rcpt_to[0] for m in backup.messages) == sorted(e.rcpt_to[0] for e in envs)
    assert primary.connections == 0
    attempted = d.of_kind(seen, events.Attempted)
    assert {e.upstream for e in attempted} == {"mail/backup"}


async def test_mail_over_the_primarys_quota_goes_to_the_fallback(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """A primary with a quota of 2 a day takes 2 mails; the others go to the fallback,
    none waits for tomorrow."""
    primary, backup = upstream_mod.Handler(), upstream_mod.Handler()
    up_p, up_b = await upstream_mod.start(primary), await upstream_mod.start(backup)
    try:
        pol = d.policy_view("apps/a", "mail/primary", retry=RETRY,
                            fallbacks=[snapshot.Fallback(upstream="mail/backup")])
        await d.publish_snapshot(conn, [pol], [
            d.upstream_view("mail/primary", up_p,
                            quotas=[snapshot.Quota(maximum=2, period="day")]),
            d.upstream_view("mail/backup", up_b)])
        for i in range(5):
            await d.queue(conn, d.envelope(pol, [f"m-{i}@example.org"]))
        async with d.dispatcher(d.config(nats_settings)):
            await backup.wait_for(3)
            await d.eventually(lambda: d.drained(conn))
    finally:
        await up_p.close()
        await up_b.close()
    assert (len(primary.messages), len(backup.messages)) == (2, 3)
    assert sorted(m.rcpt_to[0] for m in primary.messages + backup.messages) == [
        f"m-{i}@example.org" for i in range(5)]


async def test_the_last_upstream_keeps_its_mail(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Both upstreams suspended: the mail waits on the primary, moved nowhere, and is
    delivered there once the primary is resumed."""
    primary = upstream_mod.Handler()
    up_p = await upstream_mod.start(primary)
    try:
        pol = d.policy_view("apps/a", "mail/primary", retry=RETRY,
                            fallbacks=[snapshot.Fallback(upstream="mail/backup")])
        await d.publish_snapshot(conn, [pol], [d.upstream_view("mail/primary", up_p),
                                               d.upstream_view("mail/backup", up_p)])
        await _suspend(conn, "mail/primary")
        await _suspend(conn, "mail/backup")
        await d.queue(conn, d.envelope(pol, ["m@example.org"]))
        cfg = d.config(nats_settings, hold_delay_s=0.3)
        async with d.recording_events(conn) as seen, d.dispatcher(cfg):
            await asyncio.sleep(1.5)  # several holds: a move would show up now
            assert d.of_kind(seen, events.Moved) == []
            assert primary.connections == 0
            kv = await bus.control_kv(conn)
            await kv.delete(names.suspend_key("mail/primary"))
            await primary.wait_for(1)
            await d.eventually(lambda: d.drained(conn))
    finally:
        await up_p.close()
    assert [m.rcpt_to for m in primary.messages] == [["m@example.org"]]
    assert d.of_kind(seen, events.Moved) == []


async def test_a_quota_reply_fails_over_at_once(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """A primary answering ``550 5.4.5`` is suspended and the mail goes to the fallback
    at once (no failoverAfter wait), nothing dead."""
    primary = upstream_mod.ProviderHandler(refuse_all=True)
    backup = upstream_mod.Handler()
    up_p, up_b = await upstream_mod.start(primary), await upstream_mod.start(backup)
    try:
        pol = d.policy_view("apps/a", "mail/primary", retry=RETRY, failover_after_s=3600.0,
                            fallbacks=[snapshot.Fallback(upstream="mail/backup")])
        await d.publish_snapshot(conn, [pol], [d.upstream_view("mail/primary", up_p),
                                               d.upstream_view("mail/backup", up_b)])
        await d.queue(conn, d.envelope(pol, ["m@example.org"]))
        async with d.dispatcher(d.config(nats_settings)):
            await backup.wait_for(1)
            await d.eventually(lambda: d.drained(conn))
        dead = await d.dead_letters(conn)
        entry = await (await bus.control_kv(conn)).get(names.suspend_key("mail/primary"))
    finally:
        await up_p.close()
        await up_b.close()
    assert [m.rcpt_to for m in backup.messages] == [["m@example.org"]]
    assert primary.refused == 1
    assert dead == []
    assert control.suspension_decoder.decode(entry.value or b"").by == "dispatcher"
