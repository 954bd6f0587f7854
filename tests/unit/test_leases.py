"""Leader election decisions: who may act, when a standby takes over, what is written."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.rules import leases

NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _lease(holder: str | None, *, renew: str = "t1", duration: int | None = 15,
           transitions: int = 0, version: str = "7") -> leases.Lease:
    return leases.Lease(
        metadata=leases.LeaseMeta(resource_version=version),
        spec=leases.LeaseSpec(holder_identity=holder, renew_time=renew,
                              lease_duration_seconds=duration, lease_transitions=transitions),
    )


@pytest.mark.parametrize(
    ("holder", "observed_at", "now", "action"),
    [
        ("me", 0.0, 1.0, "renew"),
        ("me", 0.0, 100.0, "renew"),
        ("other", 0.0, 1.0, "follow"),
        ("other", 0.0, 14.9, "follow"),
        ("other", 0.0, 15.0, "acquire"),
        ("other", 10.0, 20.0, "follow"),
        (None, 0.0, 0.0, "acquire"),
        ("", 0.0, 0.0, "acquire"),
    ],
)
def test_decide(holder: str | None, observed_at: float, now: float, action: str) -> None:
    """Renew our own lease; take another's only once it went unrenewed for its duration."""
    observation = leases.Observation(lease=_lease(holder), observed_at=observed_at)
    assert leases.decide(observation, identity="me", now=now, default_duration_s=15) == action


def test_no_lease_means_create() -> None:
    """With no Lease object yet, the first replica creates it."""
    assert leases.decide(None, identity="me", now=0.0, default_duration_s=15) == "create"


def test_missing_duration_falls_back_to_ours() -> None:
    """A Lease without leaseDurationSeconds expires after our configured duration."""
    observation = leases.Observation(lease=_lease("other", duration=None), observed_at=0.0)
    assert leases.decide(observation, identity="me", now=9.0, default_duration_s=10) == "follow"
    assert leases.decide(observation, identity="me", now=10.0,
                         default_duration_s=10) == "acquire"


def test_observation_restarts_when_the_holder_renews() -> None:
    """The expiry clock restarts on a renewal, not on a mere re-read."""
    first = leases.observe(None, _lease("other", renew="t1"), now=5.0)
    reread = leases.observe(first, _lease("other", renew="t1", version="8"), now=9.0)
    renewed = leases.observe(reread, _lease("other", renew="t2", version="9"), now=12.0)
    assert (first.observed_at, reread.observed_at, renewed.observed_at) == (5.0, 5.0, 12.0)


@given(renewals=st.lists(st.floats(0.0, 14.0), min_size=1, max_size=20))
def test_a_renewing_holder_is_never_overthrown(renewals: list[float]) -> None:
    """As long as the holder renews more often than the duration, a standby only follows."""
    observation = None
    now = 0.0
    for index, gap in enumerate(renewals):
        now += gap
        observation = leases.observe(observation, _lease("other", renew=f"t{index}"), now=now)
        assert leases.decide(observation, identity="me", now=now + 0.5,
                             default_duration_s=15) == "follow"


def test_writes_carry_the_version_read() -> None:
    """Renew and acquire are guarded by the resourceVersion read (409 for the loser)."""
    observation = leases.Observation(lease=_lease("other", transitions=3), observed_at=0.0)
    patch = leases.write_patch(observation, "acquire", identity="me", duration_s=15, now=NOW)
    assert patch == {
        "metadata": {"resourceVersion": "7"},
        "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15,
                 "acquireTime": "2024-05-01T12:00:00.123456Z",
                 "renewTime": "2024-05-01T12:00:00.123456Z", "leaseTransitions": 4},
    }


def test_renew_keeps_acquire_time_and_transitions() -> None:
    """A renewal moves renewTime only."""
    lease = msgspec.structs.replace(
        _lease("me", transitions=2),
        spec=leases.LeaseSpec(holder_identity="me", acquire_time="2024-04-01T00:00:00.000000Z",
                              lease_transitions=2, lease_duration_seconds=15),
    )
    patch = leases.write_patch(leases.Observation(lease=lease, observed_at=0.0), "renew",
                               identity="me", duration_s=15, now=NOW)
    assert patch["spec"]["acquireTime"] == "2024-04-01T00:00:00.000000Z"
    assert patch["spec"]["leaseTransitions"] == 2


def test_release_clears_the_holder() -> None:
    """Releasing empties holderIdentity so a standby acquires at once."""
    observation = leases.Observation(lease=_lease("me"), observed_at=0.0)
    patch = leases.release_patch(observation, now=NOW)
    assert patch["spec"]["holderIdentity"] is None
    assert patch["metadata"] == {"resourceVersion": "7"}


def test_create_body_is_a_lease() -> None:
    """The created object is a coordination.k8s.io/v1 Lease held by us."""
    body = leases.create_body(name="l", namespace="ns", identity="me", duration_s=15.4, now=NOW)
    assert body["apiVersion"] == "coordination.k8s.io/v1"
    assert body["metadata"] == {"name": "l", "namespace": "ns"}
    assert body["spec"]["holderIdentity"] == "me"
    assert body["spec"]["leaseDurationSeconds"] == 15
