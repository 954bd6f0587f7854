"""The pure parts of metrics and health: rejection reasons, consumer rows, readiness,
routing of health requests, and the registry's own bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher import sampling
from ingress.rules import reasons, replies
from runtime import health, metrics
from schemas import names


@pytest.mark.parametrize(("reply", "reason"), [
    (replies.NO_SNAPSHOT, "no_snapshot"),
    (replies.BROKER_DOWN, "broker_unavailable"),
    (replies.INTERNAL_ERROR, "internal_error"),
    (replies.TOO_MANY_RECIPIENTS, "too_many_recipients"),
    (replies.BAD_ADDRESS, "bad_address"),
    (replies.TLS_REQUIRED, "tls_required"),
    (replies.TOO_BIG, "too_big"),
    (replies.too_big(4096), "too_big"),
    (replies.no_route("10.1.2.3"), "no_policy"),
    (replies.no_policy("10.1.2.3"), "policy_missing"),
    (replies.sender_refused("x@evil.example"), "sender_not_allowed"),
    (replies.from_refused("x@evil.example"), "from_not_allowed"),
    (replies.from_refused(""), "from_not_allowed"),
    ("554 5.0.0 something new", "other"),
])
def test_every_refusal_reply_has_its_reason(reply: str, reason: str) -> None:
    """Each reply the ingress refuses with maps to one short reason label."""
    assert reasons.of(reply) == reason


BUS = names.Bus(prefix="podpost")


def test_consumer_rows_keep_mail_consumers_of_served_upstreams() -> None:
    """Rows are keyed by (upstream, policy) from the filter subject; foreign subjects and
    consumers without a filter are left out; missing counts are zero."""
    consumers: list[sampling.Row] = [
        (BUS.mail_subject("mail/relay", "apps/a"), 4, 1),
        (BUS.mail_subject("mail/other", "apps/b"), None, None),
        ("elsewhere.subject", 9, 9),
        (None, 9, 9),
        (BUS.mail_filter(), 7, 7),
    ]
    assert sampling.rows(BUS, consumers, []) == {
        ("mail/relay", "apps/a"): (4, 1), ("mail/other", "apps/b"): (0, 0)}
    assert sampling.rows(BUS, consumers, ["mail/relay"]) == {("mail/relay", "apps/a"): (4, 1)}


def test_readiness_needs_every_expected_role_and_every_probe() -> None:
    """An expected role that has not registered is 'starting'; the first failing probe
    is the reason; leaving a block undoes it."""
    ready = health.Readiness()
    assert ready.reason() == "no role started"
    fine = {"broker": True}
    with ready.expecting(["ingress", "dispatcher"]):
        assert ready.reason() == "ingress: starting"
        with ready.registered("ingress", lambda: None):
            assert ready.reason() == "dispatcher: starting"
            with ready.registered("dispatcher", lambda: None if fine["broker"] else "down"):
                assert ready.reason() is None
                fine["broker"] = False
                assert ready.reason() == "dispatcher: down"
            assert ready.reason() == "dispatcher: starting"
    assert ready.reason() == "no role started"


@dataclass
class _Conn:
    is_connected: bool


@dataclass
class _Holder:
    current: object | None


def test_probes_read_the_connection_and_the_snapshot() -> None:
    """`connected` and `loaded` say why not, in a few words."""
    assert health.connected(_Conn(True))() is None
    assert health.connected(_Conn(False))() == "not connected to NATS"
    assert health.loaded(_Holder(object()))() is None
    assert health.loaded(_Holder(None))() == "no policy snapshot loaded"


@pytest.mark.parametrize(("method", "path", "reason", "stopping", "expected"), [
    ("GET", "/healthz", "x: down", True, (200, b"ok\n")),
    ("GET", "/readyz", None, False, (200, b"ready\n")),
    ("GET", "/readyz?verbose", None, False, (200, b"ready\n")),
    ("GET", "/readyz", "ingress: no policy snapshot loaded", False,
     (503, b"ingress: no policy snapshot loaded\n")),
    ("GET", "/readyz", "two\nlines", False, (503, b"two lines\n")),
    ("GET", "/readyz", None, True, (503, b"shutting down\n")),
    ("HEAD", "/metrics", None, False, (200, b"M")),
    ("POST", "/readyz", None, False, (405, b"method not allowed\n")),
    ("GET", "/", None, False, (404, b"not found\n")),
])
def test_health_routes(method: str, path: str, reason: str | None, stopping: bool,
                       expected: tuple[int, bytes]) -> None:
    """Each route's status and one-line body."""
    status, _, body = health.respond(method, path, reason=reason, stopping=stopping,
                                     body_of_metrics=lambda: b"M")
    assert (status, body) == expected


def test_consumer_gauges_are_replaced_not_accumulated() -> None:
    """A consumer missing from the next sample disappears from the gauges."""
    m = metrics.Metrics()
    m.set_consumers({("mail/relay", "apps/a"): (4, 1), ("mail/relay", "apps/b"): (0, 2)})
    m.set_consumers({("mail/relay", "apps/b"): (1, 0)})
    scraped = metrics.samples(m.expose().decode())
    depth = {k: v for k, v in scraped.items() if k.startswith("podpost_dispatcher_queue_depth")}
    assert depth == {
        'podpost_dispatcher_queue_depth{policy="apps/b",upstream="mail/relay"}': 1.0}


@dataclass
class _Snap:
    generated_at: datetime


@dataclass
class _View:
    current: _Snap | None
    revision: int
    checked_at: float | None


def test_snapshot_gauges_follow_what_is_tracked() -> None:
    """Tracked roles report loaded, revision, age and staleness; an untracked role is
    gone; the reconciler's published snapshot is reported as its own."""
    m = metrics.Metrics()
    waiting = _View(current=None, revision=0, checked_at=None)
    generated = datetime.now(UTC) - timedelta(seconds=120)
    with m.tracking("ingress", waiting):
        scraped = metrics.samples(m.expose().decode())
        assert scraped['podpost_snapshot_loaded{role="ingress"}'] == 0.0
        assert 'podpost_snapshot_revision{role="ingress"}' not in scraped
        waiting.current, waiting.revision = _Snap(generated), 7
        m.record_published(_Snap(generated), 7)
        scraped = metrics.samples(m.expose().decode())
        for role in ("ingress", "reconciler"):
            assert scraped[f'podpost_snapshot_loaded{{role="{role}"}}'] == 1.0
            assert scraped[f'podpost_snapshot_revision{{role="{role}"}}'] == 7.0
            assert 120.0 <= scraped[f'podpost_snapshot_age_seconds{{role="{role}"}}'] < 600
    scraped = metrics.samples(m.expose().decode())
    assert 'podpost_snapshot_loaded{role="ingress"}' not in scraped
    assert 'podpost_snapshot_staleness_seconds{role="reconciler"}' in scraped


def test_reset_starts_every_counter_again() -> None:
    """A reset registry is a new one: the old counts are gone, the old one is untouched."""
    old = metrics.reset()
    old.rejected.labels("no_policy", "").inc()
    new = metrics.reset()
    assert metrics.current() is new
    key = metrics.series("podpost_ingress_rejected_total",
                         {"reason": "no_policy", "policy": ""}.items())
    assert metrics.samples(old.expose().decode())[key] == 1.0
    assert key not in metrics.samples(new.expose().decode())
