"""``podpost status`` shows each rate-limited policy's use of its current window."""

from __future__ import annotations

from datetime import UTC, datetime

from admin.rules import statusreport
from schemas import names, snapshot

BUS = names.Bus(prefix="podpost")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LIMIT = snapshot.RateLimit(maximum=100, period_s=3600.0)


def _snap() -> snapshot.PolicySnapshot:
    views = [snapshot.PolicyView(key="apps/a", upstream="mail/up", ratelimit=LIMIT),
             snapshot.PolicyView(key="apps/b", upstream="mail/up", ratelimit=LIMIT),
             snapshot.PolicyView(key="apps/free", upstream="mail/up")]
    return snapshot.PolicySnapshot(
        generated_at=NOW, policies={v.key: v for v in views},
        upstreams={"mail/up": snapshot.UpstreamView(key="mail/up", host="h", port=25)})


def _usage(rate_used: dict[str, int] | None) -> dict[str, statusreport.RateUsage | None]:
    report = statusreport.status_report(BUS, now=NOW, queued={}, consumers=[], attempts=[],
                                        dead={}, snap=_snap(), revision=1, rate_used=rate_used)
    return {p.policy: p.ratelimit for u in report.upstreams for p in u.policies}


def test_window_use_is_shown_per_limited_policy() -> None:
    """A limited policy shows its count; one without a current window has used none; an
    unlimited one has no rate column at all."""
    assert _usage({"apps/a": 40}) == {
        "apps/a": statusreport.RateUsage(maximum=100, period_s=3600.0, used=40),
        "apps/b": statusreport.RateUsage(maximum=100, period_s=3600.0, used=0),
        "apps/free": None,
    }


def test_unreadable_counters_show_as_unknown() -> None:
    """When the counters could not be read the use is unknown, not zero."""
    assert _usage(None)["apps/a"] == statusreport.RateUsage(maximum=100, period_s=3600.0)
