"""Status write-back: the builder's conditions as ``/status`` merge patches, only where
something changed.

Every build yields conditions per EmailPolicy and SMTPServer. Writing them all each time
would cost one PATCH per object per change anywhere in the cluster, and each PATCH comes
back as a watch event. So a patch is planned only when the status the API last showed
differs; a condition keeps its ``lastTransitionTime`` while its status stays the same, as
Kubernetes conventions ask. Pure: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from reconciler.rules import inventory
from schemas import resources, snapshot

PLURALS = {"EmailPolicy": "emailpolicies", "SMTPServer": "smtpservers"}


class Patch(msgspec.Struct, frozen=True, kw_only=True):
    """One merge patch for one object's status subresource."""

    kind: str
    namespace: str
    name: str
    body: dict[str, Any]

    @property
    def plural(self) -> str:
        return PLURALS[self.kind]


def timestamp(now: datetime) -> str:
    """Kubernetes' metav1.Time: RFC 3339, UTC, whole seconds."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def matched_pods(snap: snapshot.PolicySnapshot) -> dict[str, int]:
    """Policy key -> how many pods currently get that policy."""
    pods: dict[str, set[str]] = {}
    for route in snap.routes:
        if route.source.startswith("pod:"):
            pods.setdefault(route.policy, set()).add(route.source)
    return {policy: len(sources) for policy, sources in pods.items()}


def invalid_conditions(invalid: inventory.Invalid) -> list[resources.Condition]:
    return [resources.Condition(
        type="Ready", status="False", reason="InvalidSpec",
        message=f"podpost cannot read this object: {invalid.error}",
    )]


def _previous_conditions(status: Mapping[str, object] | None) -> dict[str, dict[str, Any]]:
    found = (status or {}).get("conditions")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(found, list):
        for item in found:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                out[item["type"]] = item
    return out


def desired_status(
    conditions: list[resources.Condition],
    *,
    observed: inventory.Observed,
    now: datetime,
    extra: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """The status to write: conditions sorted by type, transition times kept when the
    condition's status did not change, the generation they describe."""
    previous = _previous_conditions(observed.status)
    written: list[dict[str, Any]] = []
    for condition in sorted(conditions, key=lambda c: c.type):
        before = previous.get(condition.type, {})
        same = before.get("status") == condition.status and before.get("lastTransitionTime")
        item: dict[str, Any] = {
            "type": condition.type,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": before["lastTransitionTime"] if same else timestamp(now),
        }
        if observed.generation is not None:
            item["observedGeneration"] = observed.generation
        written.append(item)
    status: dict[str, Any] = {"conditions": written}
    if observed.generation is not None:
        status["observedGeneration"] = observed.generation
    status.update(extra or {})
    return status


def needs_patch(observed: inventory.Observed, desired: Mapping[str, Any]) -> bool:
    current = observed.status or {}
    return any(current.get(field) != value for field, value in desired.items())


def plan(
    conditions: Mapping[str, list[resources.Condition]],
    snap: snapshot.PolicySnapshot,
    *,
    observed: Mapping[str, Mapping[str, inventory.Observed]],
    invalid: Mapping[str, Mapping[str, inventory.Invalid]],
    now: datetime,
    matched: Mapping[str, int] | None = None,
) -> list[Patch]:
    """Patches for every existing object whose status differs from what it should say.

    ``conditions`` is the builder's (``"EmailPolicy:ns/name"`` -> conditions); ``observed``
    and ``invalid`` are per kind, keyed ``ns/name``. ``matched`` (policy -> pods) replaces
    counting the snapshot's routes, when the routes are not in it (`routebook.matched`)."""
    pods = matched_pods(snap) if matched is None else matched
    patches: list[Patch] = []
    for kind in sorted(observed):
        for key, seen in sorted(observed[kind].items()):
            bad = invalid.get(kind, {}).get(key)
            wanted = invalid_conditions(bad) if bad else conditions.get(f"{kind}:{key}")
            if wanted is None:
                continue
            extra: dict[str, object] = {}
            if kind == "EmailPolicy":
                extra["matchedPods"] = 0 if bad else pods.get(key, 0)
            desired = desired_status(wanted, observed=seen, now=now, extra=extra)
            if needs_patch(seen, desired):
                namespace, _, name = key.partition("/")
                patches.append(Patch(kind=kind, namespace=namespace, name=name,
                                     body={"status": desired}))
    return patches
