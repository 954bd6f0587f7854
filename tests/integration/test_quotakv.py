"""Provider quotas against a real nats-server: racing takers never exceed an account's
window, refunds give back what the provider refused, ``fill`` marks a window full, and
``podpost status`` shows the use (``3/5 today``)."""

from __future__ import annotations

import asyncio

from dispatcher import quotakv
from runtime import bus, settings
from schemas import rates, snapshot
from tests.support import cli
from tests.support import dispatching as d

DAY = snapshot.Quota(maximum=5, period="day")
MONTH_RCPTS = snapshot.Quota(maximum=100, period="month", count="recipients")
UP = snapshot.UpstreamView(key="mail/brevo", host="127.0.0.1", port=2525,
                           quotas=[DAY, MONTH_RCPTS])


async def _counter(conn: bus.Conn) -> quotakv.QuotaCounter:
    return quotakv.QuotaCounter(await bus.rates_kv(conn), deadlines=conn.deadlines)


async def test_racing_takers_never_exceed_the_window(conn: bus.Conn) -> None:
    """Twelve concurrent takes (as from several replicas and policies) on one account
    with 5 a day: exactly 5 succeed, the others are told to wait until the window ends,
    and the month's recipient count holds exactly what the five took."""
    counters = [await _counter(conn) for _ in range(3)]
    results = await asyncio.gather(*(counters[i % 3].take(UP, "apps.login", 2)
                                     for i in range(12)))
    taken = [r for r in results if r.parts]
    waiting = [r for r in results if r.wait_s > 0]
    assert (len(taken), len(waiting)) == (5, 7)
    assert all("used up" in r.reason and r.wait_s <= quotakv.RECHECK_S for r in waiting)
    kv = await bus.rates_kv(conn)
    used = {}
    for key in await kv.keys():
        window = rates.quota_decoder.decode((await kv.get(key)).value or b"")
        used[window.period] = window.used
    assert used == {"day": 5, "month": 10}


async def test_what_the_provider_refused_goes_back(conn: bus.Conn) -> None:
    """A mail to 3 recipients with 1 accepted keeps its day message and gives back 2 of
    the month's recipients; a mail with none accepted gives back its message and all 3."""
    counter = await _counter(conn)
    one = await counter.take(UP, None, 3)
    two = await counter.take(UP, None, 3)
    await counter.give_back(UP, one, tried=3, accepted=1)
    await counter.give_back(UP, two, tried=3, accepted=0)
    kv = await bus.rates_kv(conn)
    used = {}
    for key in await kv.keys():
        window = rates.quota_decoder.decode((await kv.get(key)).value or b"")
        used[window.period] = window.used
    assert used == {"day": 1, "month": 1}


async def test_a_full_reply_fills_the_day_window(conn: bus.Conn) -> None:
    """``fill`` (a reply rule's wait) marks the account's day window full: the next take
    waits."""
    counter = await _counter(conn)
    assert (await counter.take(UP, None, 1)).parts
    assert await counter.fill(UP, None) is not None
    assert (await counter.take(UP, None, 1)).wait_s > 0


async def test_status_shows_each_accounts_use(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """``podpost status`` shows the upstream's quota use in its current window."""
    counter = await _counter(conn)
    for _ in range(3):
        assert (await counter.take(UP, None, 1)).parts
    await d.publish_snapshot(conn, [d.policy_view("apps/a", "mail/brevo")], [UP])
    table = await cli.podpost(nats_settings.url, "status")
    assert "3/5 today" in table.out
    assert "3/100 rcpts this month" in table.out
    report = (await cli.podpost(nats_settings.url, "status", "--json")).json()
    [row] = [u for u in report["upstreams"] if u["upstream"] == "mail/brevo"]
    assert {(q["period"], q["used"], q["maximum"]) for q in row["quotas"]} == {
        ("day", 3, 5), ("month", 3, 100)}
