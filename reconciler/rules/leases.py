"""Leader election on a ``coordination.k8s.io/v1`` Lease: the decisions, as data.

Two reconciler replicas must not both publish snapshots or write statuses. They follow
client-go's protocol: the holder renews the Lease every few seconds; another replica takes
it over only after the record has stayed unchanged for a whole ``leaseDurationSeconds`` *as
measured on its own monotonic clock* (so wall-clock skew between nodes does not matter);
every write carries the resourceVersion it read, so of two racing writers the API server
accepts one and answers 409 to the other. A leader that cannot renew within its renew
deadline (shorter than the lease duration) stops acting before anyone may take over.
Pure: times are passed in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

Action = Literal["create", "renew", "acquire", "follow"]


class LeaseSpec(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    holder_identity: str | None = None
    lease_duration_seconds: int | None = None
    acquire_time: str | None = None
    renew_time: str | None = None
    lease_transitions: int | None = None


class LeaseMeta(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    resource_version: str = ""


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    metadata: LeaseMeta = LeaseMeta()
    spec: LeaseSpec = LeaseSpec()


lease_decoder = msgspec.json.Decoder(Lease)


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """A Lease as last read, and when (monotonic) its content was first seen this way."""

    lease: Lease
    observed_at: float

    @property
    def holder(self) -> str:
        return self.lease.spec.holder_identity or ""


def _content(lease: Lease) -> tuple[object, ...]:
    spec = lease.spec
    return (spec.holder_identity, spec.renew_time, spec.lease_transitions,
            spec.lease_duration_seconds)


def observe(previous: Observation | None, lease: Lease, *, now: float) -> Observation:
    """Keep the first-seen time while the holder has not renewed; restart it when it has."""
    if previous is not None and _content(previous.lease) == _content(lease):
        return Observation(lease=lease, observed_at=previous.observed_at)
    return Observation(lease=lease, observed_at=now)


def decide(observation: Observation | None, *, identity: str, now: float,
           default_duration_s: float) -> Action:
    """What this replica should do next with the Lease."""
    if observation is None:
        return "create"
    if observation.holder == identity:
        return "renew"
    duration = observation.lease.spec.lease_duration_seconds or default_duration_s
    if not observation.holder or now >= observation.observed_at + duration:
        return "acquire"
    return "follow"


def microtime(now: datetime) -> str:
    """metav1.MicroTime: RFC 3339 in UTC with microseconds."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _spec(*, identity: str, duration_s: float, acquired: str, renewed: str,
          transitions: int) -> dict[str, Any]:
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration_s)),
        "acquireTime": acquired,
        "renewTime": renewed,
        "leaseTransitions": transitions,
    }


def create_body(*, name: str, namespace: str, identity: str, duration_s: float,
                now: datetime) -> dict[str, Any]:
    stamp = microtime(now)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": _spec(identity=identity, duration_s=duration_s, acquired=stamp,
                      renewed=stamp, transitions=0),
    }


def write_patch(observation: Observation, action: Action, *, identity: str,
                duration_s: float, now: datetime) -> dict[str, Any]:
    """The merge patch for ``renew`` or ``acquire``, guarded by the resourceVersion read."""
    spec = observation.lease.spec
    stamp = microtime(now)
    transitions = spec.lease_transitions or 0
    if action == "acquire":
        acquired, transitions = stamp, transitions + 1
    else:
        acquired = spec.acquire_time or stamp
    return {
        "metadata": {"resourceVersion": observation.lease.metadata.resource_version},
        "spec": _spec(identity=identity, duration_s=duration_s, acquired=acquired,
                      renewed=stamp, transitions=transitions),
    }


def release_patch(observation: Observation, *, now: datetime) -> dict[str, Any]:
    """Give the Lease up on a clean shutdown so a standby takes over at once."""
    return {
        "metadata": {"resourceVersion": observation.lease.metadata.resource_version},
        "spec": {"holderIdentity": None, "leaseDurationSeconds": 1,
                 "renewTime": microtime(now)},
    }
