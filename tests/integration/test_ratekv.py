"""The global rate limiter against a real nats-server: replicas racing for one window never
over-grant, refunds give tokens back to the window they came from, a new window starts
fresh, and a broker failure grants nothing instead of raising."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

from admin import inspecting
from dispatcher import ratekv
from runtime import bus, settings
from schemas import rates, snapshot

POLICY = "apps/web"
START_MS = 1_764_612_300_000
"""A whole minute: the window every acquire below falls in while the clock stands still."""


class Clock:
    """A wall clock the test moves by hand, in epoch milliseconds."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


async def _used(conn: bus.Conn, policy: str, start_ms: int) -> int:
    entry = await (await bus.rates_kv(conn)).get(rates.window_key(policy, start_ms))
    return rates.window_decoder.decode(entry.value or b"").used


async def test_racing_replicas_grant_exactly_the_maximum(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Three replicas (own connections) with ten fetchers each ask for tokens of one
    window at once: the grants sum to exactly the maximum, as the stored count says."""
    limit = snapshot.RateLimit(maximum=25, period_s=60.0)
    clock = Clock(START_MS + 1234)
    granted: list[int] = []
    rng = random.Random(5)

    async def fetcher(limiter: ratekv.KvLimiter, wants: list[int]) -> None:
        for want in wants:  # bounded: a lost race is a 0 this round, not an error
            granted.append(await limiter.acquire(POLICY, limit, want))

    async with bus.connect(nats_settings, "r1") as c1, bus.connect(nats_settings, "r2") as c2, \
            bus.connect(nats_settings, "r3") as c3:
        limiters = [ratekv.KvLimiter(await bus.rates_kv(c), clock=clock) for c in (c1, c2, c3)]
        async with asyncio.TaskGroup() as tg:
            for limiter in limiters:
                for _ in range(10):
                    tg.create_task(fetcher(limiter, [rng.randint(1, 4) for _ in range(8)]))
    assert sum(granted) == limit.maximum
    assert all(0 <= g <= 4 for g in granted)
    assert await _used(conn, POLICY, START_MS) == limit.maximum


async def test_unused_tokens_go_back_to_their_window(conn: bus.Conn) -> None:
    """A refund lowers the count of the window the grant came from; a grant is settled
    once; a token that found nothing before its window ended is simply dropped."""
    limit = snapshot.RateLimit(maximum=10, period_s=60.0)
    clock = Clock(START_MS)
    limiter = ratekv.KvLimiter(await bus.rates_kv(conn), clock=clock)
    assert await limiter.acquire(POLICY, limit, 6) == 6
    await limiter.refund(POLICY, limit, 4)
    assert await _used(conn, POLICY, START_MS) == 2
    await limiter.refund(POLICY, limit, 2)  # settled already: no effect
    assert await _used(conn, POLICY, START_MS) == 2
    assert await limiter.acquire(POLICY, limit, 30) == 8
    assert await limiter.acquire(POLICY, limit, 1) == 0
    clock.now_ms = START_MS + 60_000  # the next window
    await limiter.refund(POLICY, limit, 10)  # the last grant was 0: nothing to give back
    assert await limiter.acquire(POLICY, limit, 3) == 3
    clock.now_ms = START_MS + 120_000
    await limiter.refund(POLICY, limit, 3)  # nothing arrived before its window ended
    assert await _used(conn, POLICY, START_MS) == 10
    assert await _used(conn, POLICY, START_MS + 60_000) == 3


async def test_mail_arriving_after_its_window_counts_in_the_next(conn: bus.Conn) -> None:
    """A worker waiting for mail holds a token; when the mail comes after that window
    ended, it counts in the new window, even past its maximum, so the others are granted
    that much less; more mail than granted counts too."""
    limit = snapshot.RateLimit(maximum=3, period_s=60.0)
    clock = Clock(START_MS + 59_000)
    waiting = ratekv.KvLimiter(await bus.rates_kv(conn), clock=clock)
    other = ratekv.KvLimiter(await bus.rates_kv(conn), clock=clock)
    assert await waiting.acquire(POLICY, limit, 1) == 1
    clock.now_ms = START_MS + 61_000
    # another worker (its own task) takes the whole new window
    assert await asyncio.create_task(other.acquire(POLICY, limit, 3)) == 3
    await waiting.refund(POLICY, limit, 0)  # the one mail arrived now
    assert await _used(conn, POLICY, START_MS) == 1
    assert await _used(conn, POLICY, START_MS + 60_000) == 4
    assert await asyncio.create_task(other.acquire(POLICY, limit, 1)) == 0
    clock.now_ms = START_MS + 120_000
    assert await waiting.acquire(POLICY, limit, 2) == 2
    await waiting.refund(POLICY, limit, -1)  # three arrived for two tokens
    assert await _used(conn, POLICY, START_MS + 120_000) == 3


async def test_a_refund_in_another_task_does_not_touch_this_tasks_grant(conn: bus.Conn) -> None:
    """Grants are remembered per task (each worker fetches in its own), so a task that
    was granted nothing cannot give back another task's tokens."""
    limit = snapshot.RateLimit(maximum=10, period_s=60.0)
    limiter = ratekv.KvLimiter(await bus.rates_kv(conn), clock=Clock(START_MS))
    assert await limiter.acquire(POLICY, limit, 5) == 5
    await asyncio.create_task(limiter.refund(POLICY, limit, 5))
    assert await _used(conn, POLICY, START_MS) == 5


async def test_policies_count_apart_and_unlimited_ones_are_not_counted(conn: bus.Conn) -> None:
    """Each policy has its own windows; a policy without a limit gets what it asks for
    and writes nothing."""
    limit = snapshot.RateLimit(maximum=2, period_s=3600.0)
    limiter = ratekv.KvLimiter(await bus.rates_kv(conn), clock=Clock(START_MS))
    assert await limiter.acquire("apps/a", limit, 5) == 2
    assert await limiter.acquire("apps/b", limit, 5) == 2
    assert await limiter.acquire("apps/c", None, 50) == 50
    hour = START_MS - START_MS % 3_600_000
    assert sorted(await (await bus.rates_kv(conn)).keys()) == [
        rates.window_key("apps/a", hour), rates.window_key("apps/b", hour)]


async def test_the_scale_shortens_the_window_and_wait_reaches_the_next(conn: bus.Conn) -> None:
    """With a scale of 0.01 a minute is 600 ms: the counter is keyed by that window, and
    after waiting for the next one a token is there again."""
    limit = snapshot.RateLimit(maximum=1, period_s=60.0)
    limiter = ratekv.KvLimiter(await bus.rates_kv(conn), scale=0.01)
    assert await limiter.acquire(POLICY, limit, 3) == 1
    for _ in range(4):  # at most a few 600 ms windows
        if await limiter.acquire(POLICY, limit, 1) == 1:
            break
        await limiter.wait(POLICY, limit, 1.0)
    else:
        raise AssertionError("no token in the next window")
    windows = [rates.parse_window_key(k) for k in await (await bus.rates_kv(conn)).keys()]
    assert {policy for policy, _ in windows} == {POLICY}
    assert all(start % 600 == 0 for _, start in windows)


async def test_a_broker_failure_grants_nothing(nats_settings: settings.NatsSettings) -> None:
    """When the counters cannot be read (the connection is gone) acquire grants 0 and
    the mail stays queued; it never raises into the worker."""
    limit = snapshot.RateLimit(maximum=10, period_s=60.0)
    async with bus.connect(nats_settings, "gone") as gone:
        limiter = ratekv.KvLimiter(await bus.rates_kv(gone), clock=Clock(START_MS))
        await gone.nc.close()
        assert await limiter.acquire(POLICY, limit, 5) == 0
        await limiter.refund(POLICY, limit, 5)  # nothing granted: nothing to do


async def test_status_reads_each_policys_current_window(conn: bus.Conn) -> None:
    """``podpost status`` reads the counters: a policy's use of the window holding now,
    not of an older one."""
    now_ms = ratekv.now_ms()
    limit = snapshot.RateLimit(maximum=10, period_s=3600.0)
    limiter = ratekv.KvLimiter(await bus.rates_kv(conn), clock=Clock(now_ms))
    assert await limiter.acquire("apps/a", limit, 3) == 3
    await limiter.refund("apps/a", limit, 0)  # all three fetched
    old = ratekv.KvLimiter(await bus.rates_kv(conn), clock=Clock(now_ms - 7_200_000))
    assert await old.acquire("apps/b", limit, 5) == 5  # two hours ago: not current
    await old.refund("apps/b", limit, 0)
    used = await inspecting.rate_used(conn, datetime.fromtimestamp(now_ms / 1000, UTC))
    assert used == {"apps/a": 3}


async def _sent(conn: bus.Conn, policy: str, start_ms: int) -> int:
    entry = await (await bus.rates_kv(conn)).get(rates.window_key(policy, start_ms))
    return rates.window_decoder.decode(entry.value or b"").sent


async def test_only_tokens_that_found_mail_count_as_sent(conn: bus.Conn) -> None:
    """A window's ``sent`` grows by the messages each fetch got, while ``used`` also
    holds what waiting fetches reserved; status reads ``sent``, so a reservation that
    finds nothing never shows, and mail that came after its window counts in the new."""
    limit = snapshot.RateLimit(maximum=10, period_s=60.0)
    clock = Clock(START_MS + 1_000)
    limiter = ratekv.KvLimiter(await bus.rates_kv(conn), clock=clock)
    assert await limiter.acquire(POLICY, limit, 4) == 4  # reserved, fetch still waiting
    assert (await _used(conn, POLICY, START_MS), await _sent(conn, POLICY, START_MS)) == (4, 0)
    now = datetime.fromtimestamp(clock.now_ms / 1000, UTC)
    assert await inspecting.rate_used(conn, now) == {POLICY: 0}
    await limiter.refund(POLICY, limit, 4)  # nothing came
    assert (await _used(conn, POLICY, START_MS), await _sent(conn, POLICY, START_MS)) == (0, 0)
    assert await limiter.acquire(POLICY, limit, 4) == 4
    await limiter.refund(POLICY, limit, 1)  # three came
    assert (await _used(conn, POLICY, START_MS), await _sent(conn, POLICY, START_MS)) == (3, 3)
    assert await limiter.acquire(POLICY, limit, 2) == 2
    await limiter.refund(POLICY, limit, -1)  # three came for two tokens
    assert (await _used(conn, POLICY, START_MS), await _sent(conn, POLICY, START_MS)) == (6, 6)
    assert await limiter.acquire(POLICY, limit, 1) == 1
    clock.now_ms = START_MS + 61_000
    await limiter.refund(POLICY, limit, 0)  # it came after the window ended
    assert (await _used(conn, POLICY, START_MS), await _sent(conn, POLICY, START_MS)) == (7, 6)
    nxt = START_MS + 60_000
    assert (await _used(conn, POLICY, nxt), await _sent(conn, POLICY, nxt)) == (1, 1)
