"""The retry schedule: Postfix's age-clamped delay and the per-policy overrides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.rules import backoff
from schemas import snapshot

POSTFIX = snapshot.RetryPolicy()  # 300 s .. 4020 s, 5 days


@pytest.mark.parametrize(
    ("age_s", "delay_s"),
    [
        (0.0, 300.0),
        (-30.0, 300.0),  # clock skew between replicas
        (299.0, 300.0),
        (300.0, 300.0),
        (600.0, 600.0),
        (1200.0, 1200.0),
        (4020.0, 4020.0),
        (4021.0, 4020.0),
        (3 * 86400.0, 4020.0),
    ],
)
def test_delay_is_the_age_clamped_to_the_window(age_s: float, delay_s: float) -> None:
    """The delay is the mail's age, but never under min_delay_s nor over max_delay_s."""
    assert backoff.delay_for(age_s, POSTFIX) == delay_s


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (None, POSTFIX),
        (snapshot.RetryOverride(), POSTFIX),
        (snapshot.RetryOverride(min_delay_s=0.2, max_delay_s=0.5, max_age_s=3.0),
         snapshot.RetryPolicy(min_delay_s=0.2, max_delay_s=0.5, max_age_s=3.0)),
        (snapshot.RetryOverride(max_age_s=3600.0),
         snapshot.RetryPolicy(min_delay_s=300.0, max_delay_s=4020.0, max_age_s=3600.0)),
        (snapshot.RetryOverride(min_delay_s=60.0),
         snapshot.RetryPolicy(min_delay_s=60.0, max_delay_s=4020.0, max_age_s=5 * 86400.0)),
        # a min above the global max lifts the max with it
        (snapshot.RetryOverride(min_delay_s=7200.0),
         snapshot.RetryPolicy(min_delay_s=7200.0, max_delay_s=7200.0, max_age_s=5 * 86400.0)),
    ],
)
def test_a_policy_overrides_the_global_schedule_field_by_field(
    override: snapshot.RetryOverride | None, expected: snapshot.RetryPolicy
) -> None:
    """Each field a policy sets replaces the global one; unset fields stay global."""
    assert backoff.effective(POSTFIX, override) == expected


@pytest.mark.parametrize(
    ("age_s", "expired"), [(0.0, False), (5 * 86400.0 - 1, False), (5 * 86400.0, True)]
)
def test_a_mail_expires_at_the_max_queue_age(age_s: float, expired: bool) -> None:
    """A mail is given up once its age reaches max_age_s, not before."""
    assert backoff.expired(age_s, POSTFIX) is expired


def test_age_counts_a_naive_received_time_as_utc() -> None:
    """A received time without a zone is UTC, so old and new envelopes compare."""
    now = datetime(2024, 5, 1, 12, 0, 10, tzinfo=UTC)
    naive = datetime(2024, 5, 1, 12, 0, 0)
    assert backoff.age_s(naive, now) == 10.0
    assert backoff.age_s(now - timedelta(minutes=2), now) == 120.0


windows = st.tuples(
    st.floats(0.0, 1e5, allow_nan=False), st.floats(0.0, 1e5, allow_nan=False),
    st.floats(0.0, 1e7, allow_nan=False),
).map(lambda t: snapshot.RetryPolicy(min_delay_s=t[0], max_delay_s=t[1], max_age_s=t[2]))
ages = st.floats(-1e3, 1e7, allow_nan=False)


@given(policy=windows, age=ages)
def test_delay_stays_within_the_window(policy: snapshot.RetryPolicy, age: float) -> None:
    """Whatever the age, the delay is within [min, max(min, max)]."""
    delay = backoff.delay_for(age, policy)
    assert policy.min_delay_s <= delay <= max(policy.min_delay_s, policy.max_delay_s)


@given(policy=windows, first=ages, second=ages)
def test_delay_never_decreases_with_age(
    policy: snapshot.RetryPolicy, first: float, second: float
) -> None:
    """An older mail never waits less than a younger one."""
    young, old = sorted((first, second))
    assert backoff.delay_for(young, policy) <= backoff.delay_for(old, policy)
