"""The rate limiter's pure arithmetic: windows, grants, refunds, waits; and the layout of
its counters in the RATES bucket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.rules import limiting
from schemas import names, rates, snapshot

MINUTE = snapshot.RateLimit(maximum=10, period_s=60.0)
HOUR = snapshot.RateLimit(maximum=10, period_s=3600.0)

instants = st.integers(min_value=0, max_value=2**53)
periods = st.integers(min_value=1, max_value=10**8)
counts = st.integers(min_value=0, max_value=10**6)


@pytest.mark.parametrize(("limit", "scale", "expected"), [
    (MINUTE, 1.0, 60_000),
    (HOUR, 1.0, 3_600_000),
    (MINUTE, 0.05, 3_000),
    (MINUTE, 1e-9, 1),  # never a zero-length window
])
def test_period_is_the_policy_period_times_the_scale(
    limit: snapshot.RateLimit, scale: float, expected: int
) -> None:
    """The window length is the policy's period times the scale, in whole milliseconds."""
    assert limiting.period_ms(limit, scale) == expected


@pytest.mark.parametrize(("now", "period", "start"), [
    (0, 60_000, 0),
    (59_999, 60_000, 0),
    (60_000, 60_000, 60_000),
    (1_764_612_345_678, 60_000, 1_764_612_300_000),
])
def test_window_start_table(now: int, period: int, start: int) -> None:
    """Windows are aligned to the epoch: a minute window starts on a whole minute."""
    assert limiting.window_start(now, period) == start


@given(now=instants, period=periods)
def test_the_window_holds_now_and_is_shared_by_every_instant_in_it(now: int, period: int) -> None:
    """``now`` lies in [start, start + period), and every instant of that range (on any
    replica) names the same window."""
    start = limiting.window_start(now, period)
    assert start <= now < start + period
    assert start % period == 0
    assert limiting.window_start(start, period) == start
    assert limiting.window_start(start + period - 1, period) == start
    assert limiting.window_start(start + period, period) == start + period


@pytest.mark.parametrize(("maximum", "used", "want", "granted"), [
    (10, 0, 5, 5),
    (10, 8, 5, 2),
    (10, 10, 5, 0),
    (10, 12, 5, 0),  # a lowered maximum: nothing, never negative
    (0, 0, 5, 0),  # maximum 0 pauses the policy
    (10, 0, 0, 0),
])
def test_grant_table(maximum: int, used: int, want: int, granted: int) -> None:
    """A grant is as much as asked, capped by what is left of the window."""
    assert limiting.grant(maximum, used, want) == granted


@given(maximum=counts, used=counts, want=counts)
def test_a_grant_never_overfills_the_window(maximum: int, used: int, want: int) -> None:
    """Whatever was asked, a grant is within [0, want] and used + grant never passes the
    maximum unless it was passed already (then the grant is zero)."""
    granted = limiting.grant(maximum, used, want)
    assert 0 <= granted <= want
    assert used + granted <= max(maximum, used)


@given(maximum=st.integers(min_value=0, max_value=200),
       wants=st.lists(st.integers(min_value=0, max_value=60), max_size=40))
def test_grants_in_sequence_hand_out_exactly_the_maximum(maximum: int, wants: list[int]) -> None:
    """Successive grants (as successive compare-and-swaps apply them) sum to
    min(maximum, everything asked): the window is filled, never overfilled."""
    used = 0
    for want in wants:
        used += limiting.grant(maximum, used, want)
    assert used == min(maximum, sum(wants))


@given(used=counts, delta=st.integers(min_value=-10**6, max_value=10**6))
def test_a_correction_never_leaves_a_negative_count(used: int, delta: int) -> None:
    """A count corrected by ``delta`` is used + delta, but never below zero."""
    assert limiting.adjusted(used, delta) == max(0, used + delta)


@pytest.mark.parametrize(("now", "tokens", "unused", "expected"), [
    (1_500, 4, 3, (1_000, -3)),  # one of four arrived, same window: three go back
    (1_500, 4, 0, (1_000, 0)),  # all arrived: nothing to correct
    (1_500, 4, -2, (1_000, 2)),  # two more than granted arrived: counted too
    (2_100, 1, 0, (2_000, 1)),  # arrived after its window: counts in the new one
    (2_100, 4, 4, (2_000, 0)),  # nothing arrived, window over: nothing to do
    (5_000, 4, -1, (5_000, 5)),
])
def test_settle_table(now: int, tokens: int, unused: int, expected: tuple[int, int]) -> None:
    """A grant from the window at 1000 (period 1000) is settled where the fetch ended."""
    assert limiting.settle(1_000, tokens, unused, now, 1_000) == expected


@pytest.mark.parametrize(("tokens", "unused", "sent"), [
    (4, 4, 0),  # the fetch found nothing: a reservation, not mail
    (4, 1, 3),
    (4, 0, 4),
    (2, -1, 3),  # more arrived than granted: all of it is mail
    (0, 0, 0),
])
def test_arrived_table(tokens: int, unused: int, sent: int) -> None:
    """What a settled fetch adds to its window's ``sent``: the messages it got."""
    assert limiting.arrived(tokens, unused) == sent


@given(start_index=st.integers(min_value=0, max_value=10**6), period=periods,
       later=st.integers(min_value=0, max_value=10**9),
       tokens=st.integers(min_value=0, max_value=100), arrived=st.integers(0, 200))
def test_settled_counts_match_what_arrived(start_index: int, period: int, later: int,
                                           tokens: int, arrived: int) -> None:
    """Whatever happened during the fetch, the windows end up counting exactly what
    arrived: granted then corrected in the same window, or moved to the new one."""
    granted_start = start_index * period
    now = granted_start + later
    window, delta = limiting.settle(granted_start, tokens, tokens - arrived, now, period)
    assert window == limiting.window_start(now, period)
    if window == granted_start:
        assert tokens + delta == arrived
    else:
        assert delta == arrived


@given(now=instants, period=periods, max_s=st.floats(min_value=0, max_value=1e6))
def test_the_wait_ends_at_the_next_window_or_the_bound(now: int, period: int, max_s: float
                                                       ) -> None:
    """The wait reaches the next window start, unless ``max_s`` comes first."""
    wait = limiting.wait_s(now, period, max_s)
    start = limiting.window_start(now, period)
    assert 0 <= wait <= max_s
    assert wait == pytest.approx(min(max_s, (start + period - now) / 1000))


@pytest.mark.parametrize(("policy", "start", "key"), [
    ("apps/web", 1_764_612_300_000, "apps.web.1764612300000"),
    ("apps/web.v2", 0, "apps.web_v2.0"),
])
def test_window_key_layout(policy: str, start: int, key: str) -> None:
    """A counter's key is the policy as two subject tokens and the window start in ms."""
    assert rates.window_key(policy, start) == key
    assert rates.parse_window_key(key) == (policy, start)


@pytest.mark.parametrize("key", ["apps.web", "apps.web.x1", "web.1", "a..1", "a.b.c.1"])
def test_other_keys_are_refused(key: str) -> None:
    """Only ``<ns>.<name>.<digits>`` is a window key."""
    with pytest.raises(names.InvalidKey):
        rates.parse_window_key(key)


def test_current_picks_each_policys_window_holding_now() -> None:
    """Of the stored windows, each policy's one that holds ``now`` is current; a policy
    whose windows are all over has none."""
    def window(policy: str, start: int, used: int) -> rates.RateWindow:
        return rates.RateWindow(policy=policy, start_ms=start, period_ms=1000, maximum=5,
                                used=used)

    stored = [window("a/a", 0, 5), window("a/a", 1000, 2), window("b/b", 0, 4)]
    assert rates.current(stored, 1500) == {"a/a": window("a/a", 1000, 2)}
    assert rates.current(stored, 999) == {"a/a": window("a/a", 0, 5), "b/b": window("b/b", 0, 4)}
    assert rates.current(stored, 2000) == {}
