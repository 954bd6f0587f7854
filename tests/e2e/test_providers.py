"""Provider accounts with two real ``podpost dispatcher`` processes and upstreams that
answer like providers: a shared daily quota holds across policies and replicas, a
"quota exceeded" 5xx suspends the upstream instead of dead-lettering, while a real
``550 5.1.1`` still dead-letters; a server's connection cap holds across replicas."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path

from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import control, events, names, rates, snapshot
from tests.support import cli, processes
from tests.support import dispatching as d

N = 4
"""The account's daily quota."""
DAY_MS = 2000
"""A day, scaled for the test."""
SCALE = DAY_MS / 86_400_000


def _dispatchers(count: int, nats_url: str, logs: Path, **extra: str
                 ) -> contextlib.AbstractAsyncContextManager[list[Path]]:
    return processes.dispatchers(
        count, nats_url, logs, PODPOST_DISPATCHER__RATE_WINDOW_SCALE=repr(SCALE),
        PODPOST_DISPATCHER__HOLD_DELAY_S="0.5", **extra)


async def _quota_windows(conn: bus.Conn) -> list[rates.QuotaWindow]:
    kv = await bus.rates_kv(conn)
    out = []
    for key in await kv.keys():
        if key.startswith(rates.QUOTA):
            entry = await kv.get(key)
            out.append(rates.quota_decoder.decode(entry.value or b""))
    return sorted(out, key=lambda w: w.start_ms)


async def test_a_daily_quota_shared_by_two_policies_holds_across_two_replicas(
    conn: bus.Conn, nats_settings: settings.NatsSettings, tmp_path: Path
) -> None:
    """Two policies send through one account with a quota of N a (scaled) day; two
    dispatcher processes deliver every mail exactly once, never more than N per window
    (the provider refuses none), the rest in later windows, and nothing is dead."""
    handler = upstream_mod.ProviderHandler(maximum=N, period_ms=DAY_MS)
    up = await upstream_mod.start(handler)
    probe = upstream_mod.Handler()
    up_probe = await upstream_mod.start(probe)
    try:
        pol_a = d.policy_view("apps/a", "mail/brevo")
        pol_b = d.policy_view("apps/b", "mail/brevo")
        pol_p = d.policy_view("apps/probe", "mail/probe")
        view = d.upstream_view("mail/brevo", up, quotas=[
            snapshot.Quota(maximum=N, period="day")])
        await d.publish_snapshot(conn, [pol_a, pol_b, pol_p],
                                 [view, d.upstream_view("mail/probe", up_probe)])
        rcpts = [f"a-{i}@example.org" for i in range(N + 1)] + [
            f"b-{i}@example.org" for i in range(N + 1)]
        async with _dispatchers(2, nats_settings.url, tmp_path):
            await d.queue(conn, d.envelope(pol_p, ["probe@example.org"]))
            await probe.wait_for(1, timeout_s=20.0)  # the dispatchers are up
            # Queue at the start of a window, so the first burst does not straddle its
            # end (a message counted in one window and arriving in the next).
            await asyncio.sleep((DAY_MS - time.time() * 1000 % DAY_MS) / 1000 + 0.1)
            for rcpt in rcpts:
                await d.queue(conn, d.envelope(pol_a if rcpt.startswith("a") else pol_b,
                                               [rcpt]))
            await handler.wait_for(len(rcpts), timeout_s=40.0)
            await d.eventually(lambda: d.drained(conn))
            await asyncio.sleep(0.5)  # a duplicate would show up now
        windows = await _quota_windows(conn)
        dead = await d.dead_letters(conn)
    finally:
        await up.close()
        await up_probe.close()

    assert sorted(r for m in handler.messages for r in m.rcpt_to) == sorted(rcpts)
    assert dead == []
    assert handler.refused == 0
    assert max(handler.windows.values()) <= N
    assert len(handler.windows) >= 3  # 2N+2 mails need three windows at least
    assert all(w.used <= N and w.maximum == N for w in windows)
    assert sum(w.used for w in windows) == len(rcpts)
    assert sorted(w.used for w in windows)[-2:] == [N, N]  # the full windows
    assert {w.upstream for w in windows} == {"mail/brevo"}


async def test_a_quota_reply_suspends_the_upstream_but_an_unknown_user_is_dead(
    conn: bus.Conn, nats_settings: settings.NatsSettings, tmp_path: Path
) -> None:
    """An account whose quota is spent answers ``550 5.4.5``: the upstream is suspended
    in CONTROL for every replica and nothing is dead-lettered; on another upstream a
    ``550 5.1.1`` recipient is still dead-lettered, the other recipient delivered."""
    spent = upstream_mod.ProviderHandler(refuse_all=True)
    gmail = await upstream_mod.start(spent)
    plain = upstream_mod.Handler()
    other = await upstream_mod.start(plain)
    try:
        pol_g = d.policy_view("apps/g", "mail/gmail")
        pol_o = d.policy_view("apps/o", "mail/other")
        await d.publish_snapshot(conn, [pol_g, pol_o], [
            d.upstream_view("mail/gmail", gmail), d.upstream_view("mail/other", other)])
        for i in range(3):
            await d.queue(conn, d.envelope(pol_g, [f"g-{i}@example.org"]))
        await d.queue(conn, d.envelope(pol_o, ["fail-550@example.org", "ok@example.org"]))
        ctl = await bus.control_kv(conn)

        async def suspended() -> bool:
            try:
                entry = await ctl.get(names.suspend_key("mail/gmail"))
            except Exception:
                return False
            return entry.value is not None

        async with _dispatchers(2, nats_settings.url, tmp_path):
            await plain.wait_for(1, timeout_s=20.0)
            await d.eventually(suspended)
            await d.eventually(lambda: _dead_count(conn, 1))
            await asyncio.sleep(1.0)  # more attempts would show up now
            entry = await ctl.get(names.suspend_key("mail/gmail"))
            queued = await d.queued(conn)
        dead = await d.dead_letters(conn)
    finally:
        await gmail.close()
        await other.close()

    suspension = control.suspension_decoder.decode(entry.value or b"")
    assert suspension.by == "dispatcher"
    assert "5.4.5" in suspension.reason
    assert suspension.until is not None and suspension.until > datetime.now(UTC)
    assert spent.refused >= 1 and spent.refused < 3 * 2  # suspended: not tried on and on
    assert queued == 3  # the gmail mail waits
    assert [(x.envelope.upstream, x.envelope.rcpt_to, x.code) for x in dead] == [
        ("mail/other", ["fail-550@example.org"], 550)]
    assert [m.rcpt_to for m in plain.messages] == [["ok@example.org"]]


async def _dead_count(conn: bus.Conn, count: int) -> bool:
    return len(await d.dead_letters(conn)) >= count


async def test_a_servers_connection_cap_holds_across_two_replicas(
    conn: bus.Conn, nats_settings: settings.NatsSettings, tmp_path: Path
) -> None:
    """An upstream with maxConnections 2 and slow deliveries never sees more than 2
    sessions at once from two dispatcher processes (each alone would open 2), and every
    mail is delivered once, none dead."""
    handler = upstream_mod.Handler(slow_s=0.3)
    up = await upstream_mod.start(handler)
    count = 12
    try:
        pol = d.policy_view("apps/a", "mail/mailtrap")
        await d.publish_snapshot(conn, [pol], [d.upstream_view("mail/mailtrap", up,
                                                               max_connections=2)])
        for _ in range(count):
            await d.queue(conn, d.envelope(pol, ["slow@example.org"]))
        async with _dispatchers(2, nats_settings.url, tmp_path,
                                PODPOST_DISPATCHER__IDLE_CONNECTION_S="0.3"):
            await handler.wait_for(count, timeout_s=60.0)
            await d.eventually(lambda: d.drained(conn))
        dead = await d.dead_letters(conn)
    finally:
        await up.close()

    assert len(handler.messages) == count
    assert dead == []
    assert 1 <= handler.max_active <= 2


async def test_a_failing_primary_fails_over_and_new_mail_goes_back_to_it(
    conn: bus.Conn, nats_settings: settings.NatsSettings, tmp_path: Path
) -> None:
    """A primary answering 451 for longer than failoverAfter has its mail moved to the
    fallback (each mail delivered exactly once, there, shown by ``podpost trace``), with
    the recipient the primary refused for good dead-lettered once (not tried again on the
    fallback); once the primary works again, new mail goes to it."""
    primary = upstream_mod.Handler(flaky=1_000_000)
    backup = upstream_mod.Handler()
    up_p = await upstream_mod.start(primary)
    up_b = await upstream_mod.start(backup)
    retry = snapshot.RetryOverride(min_delay_s=0.2, max_delay_s=0.3, max_age_s=120.0)
    try:
        pol = d.policy_view("apps/a", "mail/primary", retry=retry, failover_after_s=1.0,
                            fallbacks=[snapshot.Fallback(upstream="mail/backup")])
        await d.publish_snapshot(conn, [pol], [d.upstream_view("mail/primary", up_p),
                                               d.upstream_view("mail/backup", up_b)])
        envs = [d.envelope(pol, [f"m-{i}@example.org"]) for i in range(3)]
        envs.append(d.envelope(pol, ["fail-550@example.org", "m-3@example.org"]))
        for env in envs:
            await d.queue(conn, env)
        async with d.recording_events(conn) as seen, _dispatchers(
                2, nats_settings.url, tmp_path):
            await backup.wait_for(len(envs), timeout_s=40.0)
            await d.eventually(lambda: d.drained(conn))
            primary.flaky = 0  # the primary recovers
            late = d.envelope(pol, ["late@example.org"])
            await d.queue(conn, late)
            await primary.wait_for(1, timeout_s=30.0)
            await d.eventually(lambda: d.drained(conn))
            await asyncio.sleep(0.5)  # a duplicate would show up now
            trace = await cli.podpost(nats_settings.url, "trace", envs[0].id)
        dead = await d.dead_letters(conn)
    finally:
        await up_p.close()
        await up_b.close()

    assert sorted(r for m in backup.messages for r in m.rcpt_to) == [
        f"m-{i}@example.org" for i in range(4)]
    assert [m.rcpt_to for m in primary.messages] == [["late@example.org"]]
    assert [(x.envelope.upstream, x.envelope.rcpt_to) for x in dead] == [
        ("mail/primary", ["fail-550@example.org"])]
    moved = [e for e in d.of_kind(seen, events.Moved) if e.reason.startswith("failover")]
    assert sorted(e.mail_id for e in moved) == sorted(e.id for e in envs)
    assert {e.to_upstream for e in moved} == {"mail/backup"}
    assert "mail/backup" in trace.out and "moved" in trace.out
