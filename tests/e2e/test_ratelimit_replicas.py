"""Rate limits hold across dispatcher replicas: three real ``podpost dispatcher`` processes
share one policy's window, deliver exactly its maximum per window and the rest in later
windows, lose and dead-letter nothing, and do not hold back another policy on the same
upstream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import rates, snapshot
from tests.support import dispatching as d
from tests.support import processes

N = 4
"""Policy A's maximum per window."""
A_COUNT = 2 * N + 1
"""Three windows' worth: N, N, then one."""
B_COUNT = 30
SCALE = 0.05
"""A minute becomes 3 s."""
PERIOD_MS = round(60_000 * SCALE)


class _Timed(upstream_mod.Handler):
    """Remembers the wall-clock time each message arrived, with its recipient."""

    arrivals: list[tuple[float, str]]

    def __init__(self) -> None:
        super().__init__()
        self.arrivals = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        self.arrivals.append((time.time() * 1000, envelope.rcpt_tos[0]))
        return reply


def _dispatchers(count: int, nats_url: str, logs: Path
                 ) -> contextlib.AbstractAsyncContextManager[list[Path]]:
    return processes.dispatchers(count, nats_url, logs,
                                 PODPOST_DISPATCHER__RATE_WINDOW_SCALE=str(SCALE))


async def _windows(conn: bus.Conn, policy: str) -> dict[int, int]:
    """Policy's stored windows: start (epoch ms) -> messages counted."""
    kv = await bus.rates_kv(conn)
    out: dict[int, int] = {}
    for key in await kv.keys():
        pol, start = rates.parse_window_key(key)
        if pol == policy:
            entry = await kv.get(key)
            out[start] = rates.window_decoder.decode(entry.value or b"").used
    return out


async def test_three_dispatchers_share_a_policys_window(
    conn: bus.Conn, nats_settings: settings.NatsSettings, tmp_path: Path
) -> None:
    """Policy A (N per scaled minute) and unlimited policy B share one upstream; three
    dispatcher processes deliver A's 2N+1 mails as N, N, 1 in consecutive windows (each
    counter exact, no mail before its window starts), B's mails all arrive while A waits,
    and nothing is lost, duplicated or dead-lettered."""
    handler = _Timed()
    up = await upstream_mod.start(handler)
    try:
        pol_a = d.policy_view("apps/a", "mail/up",
                              ratelimit=snapshot.RateLimit(maximum=N, period_s=60.0))
        pol_b = d.policy_view("apps/b", "mail/up")
        await d.publish_snapshot(conn, [pol_a, pol_b], [d.upstream_view("mail/up", up)])
        for i in range(A_COUNT):
            await d.queue(conn, d.envelope(pol_a, [f"a-{i}@example.org"]))
        for i in range(B_COUNT):
            await d.queue(conn, d.envelope(pol_b, [f"b-{i}@example.org"]))
        async with _dispatchers(3, nats_settings.url, tmp_path):
            await handler.wait_for(A_COUNT + B_COUNT, timeout_s=40.0)
            await d.eventually(lambda: d.drained(conn))
            await asyncio.sleep(0.5)  # a duplicate would show up now
        windows = await _windows(conn, "apps/a")
        dead = await d.dead_letters(conn)
    finally:
        await up.close()

    rcpts = sorted(rcpt for _, rcpt in handler.arrivals)
    assert rcpts == sorted([f"a-{i}@example.org" for i in range(A_COUNT)]
                           + [f"b-{i}@example.org" for i in range(B_COUNT)])
    assert dead == []
    # The counters: N, N, then the one left, in consecutive windows.
    first = min(windows)
    assert windows == {first: N, first + PERIOD_MS: N, first + 2 * PERIOD_MS: 1}
    # No A mail arrived before the window whose token it used had started.
    a_times = sorted(t for t, rcpt in handler.arrivals if rcpt.startswith("a-"))
    for i, at in enumerate(a_times):
        assert at >= first + (i // N) * PERIOD_MS, (i, at - first)
    # B was not held back by A's waits: all of it arrived before A's last window.
    b_times = [t for t, rcpt in handler.arrivals if rcpt.startswith("b-")]
    assert max(b_times) < a_times[-1]
