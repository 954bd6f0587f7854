"""Status write-back: what a status says, and that unchanged statuses are not patched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.rules import inventory, statuses
from schemas import resources, snapshot

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
READY = resources.Condition(type="Ready", status="True", reason="Ready", message="ok")
NOT_READY = resources.Condition(type="Ready", status="False", reason="ServerNotFound",
                                message="no SMTPServer default/smtp")


def _snap(*routes: tuple[str, str]) -> snapshot.PolicySnapshot:
    return snapshot.PolicySnapshot(
        generated_at=NOW,
        routes=[snapshot.Route(network=f"10.0.0.{i}/32", policy=policy, source=source)
                for i, (policy, source) in enumerate(routes)],
    )


def test_matched_pods_counts_distinct_pods() -> None:
    """A dual-stack pod (two routes) counts once; static sources do not count."""
    snap = _snap(("ns/a", "pod:ns/x"), ("ns/a", "pod:ns/x"), ("ns/a", "pod:ns/y"),
                 ("ns/b", "static:ns/office"))
    assert statuses.matched_pods(snap) == {"ns/a": 2}


def _plan(conditions: dict[str, list[resources.Condition]],
          observed: dict[str, dict[str, inventory.Observed]], *,
          invalid: dict[str, dict[str, inventory.Invalid]] | None = None,
          now: datetime = NOW, snap: snapshot.PolicySnapshot | None = None
          ) -> list[statuses.Patch]:
    return statuses.plan(conditions, snap or _snap(), observed=observed,
                         invalid=invalid or {}, now=now)


def test_first_status_is_written() -> None:
    """An object without status gets its conditions, matched pods and generation."""
    observed = {"EmailPolicy": {"ns/a": inventory.Observed(generation=3, status=None)}}
    (patch,) = _plan({"EmailPolicy:ns/a": [READY]}, observed,
                     snap=_snap(("ns/a", "pod:ns/x")))
    assert (patch.kind, patch.namespace, patch.name, patch.plural) == (
        "EmailPolicy", "ns", "a", "emailpolicies")
    assert patch.body == {"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "ok",
                        "lastTransitionTime": "2024-05-01T12:00:00Z",
                        "observedGeneration": 3}],
        "observedGeneration": 3,
        "matchedPods": 1,
    }}


def test_unchanged_status_is_not_patched() -> None:
    """Writing back what the API already shows is skipped, even a minute later."""
    observed = {"SMTPServer": {"ns/s": inventory.Observed(generation=1, status=None)}}
    (patch,) = _plan({"SMTPServer:ns/s": [READY]}, observed)
    observed = {"SMTPServer": {"ns/s": inventory.Observed(generation=1,
                                                          status=patch.body["status"])}}
    assert _plan({"SMTPServer:ns/s": [READY]}, observed, now=NOW + timedelta(minutes=1)) == []


def test_transition_time_moves_only_on_a_status_change() -> None:
    """Same status, new message: the transition time stays; status flips: it moves."""
    later = NOW + timedelta(hours=1)
    start = {"SMTPServer": {"ns/s": inventory.Observed(generation=1, status=None)}}
    (first,) = _plan({"SMTPServer:ns/s": [READY]}, start)
    seen = {"SMTPServer": {"ns/s": inventory.Observed(generation=1,
                                                      status=first.body["status"])}}
    reworded = resources.Condition(type="Ready", status="True", reason="Ready", message="fine")
    (same,) = _plan({"SMTPServer:ns/s": [reworded]}, seen, now=later)
    (flipped,) = _plan({"SMTPServer:ns/s": [NOT_READY]}, seen, now=later)
    assert same.body["status"]["conditions"][0]["lastTransitionTime"] == "2024-05-01T12:00:00Z"
    assert flipped.body["status"]["conditions"][0]["lastTransitionTime"] == "2024-05-01T13:00:00Z"


def test_invalid_objects_say_why() -> None:
    """An undecodable policy is reported not Ready with the decoding error."""
    observed = {"EmailPolicy": {"ns/bad": inventory.Observed(generation=None, status=None)}}
    invalid = {"EmailPolicy": {"ns/bad": inventory.Invalid(generation=None,
                                                           error="Object missing 'sink'")}}
    (patch,) = _plan({}, observed, invalid=invalid)
    (condition,) = patch.body["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "Object missing 'sink'" in condition["message"]
    assert patch.body["status"]["matchedPods"] == 0


def test_objects_without_conditions_or_gone_are_skipped() -> None:
    """Only objects that exist and that the builder spoke about are patched."""
    observed = {"EmailPolicy": {"ns/a": inventory.Observed(generation=1, status=None)}}
    assert _plan({"EmailPolicy:ns/other": [READY]}, observed) == []


def test_conditions_are_sorted_by_type() -> None:
    """Several conditions are written in a stable order, so equal sets compare equal."""
    conflict = resources.Condition(type="Conflict", status="True", reason="Overlap")
    observed = {"EmailPolicy": {"ns/a": inventory.Observed(generation=1, status=None)}}
    (patch,) = _plan({"EmailPolicy:ns/a": [READY, conflict]}, observed)
    assert [c["type"] for c in patch.body["status"]["conditions"]] == ["Conflict", "Ready"]
