"""What ``podpost status`` reports, as data: one row per upstream with one row per policy
underneath (queued, in flight, deferred, dead, rate-limit use) and the snapshot's age.

The raw counts come from the bus (`admin.inspecting`); folding them is pure: no I/O, no
clock (``now`` is passed in). The command prints the Structs as tables or ``--json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import msgspec

from schemas import control, mail, names, rates, snapshot


class RateUsage(msgspec.Struct, frozen=True, kw_only=True):
    """A policy's rate limit; ``used`` (messages sent in the current window, not the
    tokens dispatchers hold for fetches still waiting) is filled in by whoever can read the
    limiter's counters."""

    maximum: int
    period_s: float
    used: int | None = None


class QuotaUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One quota of one provider account (the upstream with ``credentials``): ``used``
    of ``maximum`` in the current calendar window; None when RATES could not be read."""

    credentials: str = ""
    period: str
    count: str = "messages"
    maximum: int
    used: int | None = None


class PolicyStatus(msgspec.Struct, frozen=True, kw_only=True):
    policy: str
    queued: int = 0
    """Messages in the MAIL stream for this (upstream, policy), in flight and deferred
    ones included (a work queue keeps a message until it is acked)."""
    in_flight: int | None = None
    """Delivered to a dispatcher and not yet acked (the consumer's ack-pending count);
    None when no consumer exists for the pair."""
    deferred: int = 0
    """Attempt records whose next attempt is in the future."""
    dead: int | None = None
    """Dead letters are counted per upstream (their subject); None here."""
    ratelimit: RateUsage | None = None


class UpstreamStatus(msgspec.Struct, frozen=True, kw_only=True):
    upstream: str
    queued: int = 0
    in_flight: int = 0
    deferred: int = 0
    dead: int = 0
    known: bool = True
    """Whether the current snapshot names this upstream (the catcher always counts)."""
    policies: list[PolicyStatus] = []
    suspended: bool = False
    """An operator suspended it (``podpost queue suspend``): nothing is attempted."""
    suspended_until: datetime | None = None
    suspended_reason: str = ""
    oldest_at: datetime | None = None
    """When the first mail in its line was received (None: nothing queued)."""
    oldest_age_s: float | None = None
    quotas: list[QuotaUsage] = []
    """Per account of this upstream, per quota: the use of the current window."""


class SnapshotStatus(msgspec.Struct, frozen=True, kw_only=True):
    revision: int
    generated_at: datetime
    age_s: float
    source: str = ""


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    snapshot: SnapshotStatus | None
    upstreams: list[UpstreamStatus]
    unreadable_attempts: int = 0


class ConsumerLoad(msgspec.Struct, frozen=True, kw_only=True):
    """What status needs of one MAIL consumer."""

    filter_subject: str
    ack_pending: int


def _pair_of(bus: names.Bus, subject: str) -> tuple[str, str | None] | None:
    """(upstream, policy) of a MAIL subject, (upstream, None) of a per-upstream wildcard,
    None of anything else."""
    try:
        return bus.parse_mail_filter(subject)
    except names.InvalidKey:
        return None


def dead_upstream(bus: names.Bus, subject: str) -> str | None:
    """``<prefix>.mail.dead.<ns>.<name>`` -> ``ns/name``; None of anything else."""
    try:
        return bus.parse_dead_subject(subject)
    except names.InvalidKey:
        return None


def status_report(
    bus: names.Bus,
    *,
    now: datetime,
    queued: Mapping[str, int],
    consumers: Sequence[ConsumerLoad],
    attempts: Sequence[mail.AttemptRecord],
    dead: Mapping[str, int],
    snap: snapshot.PolicySnapshot | None,
    revision: int,
    rate_used: Mapping[str, int] | None = None,
    quota_windows: Sequence[rates.QuotaWindow] | None = None,
) -> StatusReport:
    """Fold the raw counts into one row per upstream with one row per policy underneath.
    ``rate_used``: messages sent per policy in its current rate-limit window (a policy
    absent has used none); None when the counters could not be read.

    Upstreams and pairs come from the snapshot and from everything that holds data, so
    mail for a policy that moved or vanished is still shown."""
    pairs: dict[tuple[str, str], dict[str, int | None]] = {}
    upstream_in_flight: dict[str, int] = {}
    upstream_dead: dict[str, int] = {}

    def row(upstream: str, policy: str) -> dict[str, int | None]:
        return pairs.setdefault((upstream, policy),
                                {"queued": 0, "in_flight": None, "deferred": 0})

    if snap is not None:
        for view in snap.policies.values():
            row(view.upstream, view.key)
    for subject, count in queued.items():
        pair = _pair_of(bus, subject)
        if pair is not None and pair[1] is not None:
            row(pair[0], pair[1])["queued"] = count
    for consumer in consumers:
        pair = _pair_of(bus, consumer.filter_subject)
        if pair is None:
            continue
        upstream_in_flight[pair[0]] = upstream_in_flight.get(pair[0], 0) + consumer.ack_pending
        if pair[1] is not None:
            cells = row(pair[0], pair[1])
            cells["in_flight"] = (cells["in_flight"] or 0) + consumer.ack_pending
    for record in attempts:
        due = record.next_attempt_at
        if due is None or due <= now or not record.upstream or not record.policy:
            continue
        cells = row(record.upstream, record.policy)
        cells["deferred"] = (cells["deferred"] or 0) + 1
    for subject, count in dead.items():
        upstream = dead_upstream(bus, subject)
        if upstream is not None:
            upstream_dead[upstream] = upstream_dead.get(upstream, 0) + count

    known = set(snap.upstreams) if snap is not None else set()
    upstream_keys = {up for up, _ in pairs} | set(upstream_dead) | set(upstream_in_flight)
    upstream_keys |= known
    rows: list[UpstreamStatus] = []
    for upstream in sorted(upstream_keys):
        policies = [
            PolicyStatus(
                policy=policy, queued=cells["queued"] or 0, in_flight=cells["in_flight"],
                deferred=cells["deferred"] or 0, ratelimit=_rate(snap, policy, rate_used),
            )
            for (up, policy), cells in sorted(pairs.items()) if up == upstream
        ]
        rows.append(UpstreamStatus(
            upstream=upstream,
            queued=sum(p.queued for p in policies),
            in_flight=upstream_in_flight.get(upstream, 0),
            deferred=sum(p.deferred for p in policies),
            dead=upstream_dead.get(upstream, 0),
            known=snap is None or upstream in known or upstream == names.CATCHER,
            policies=policies,
            quotas=_quotas(snap, upstream, quota_windows),
        ))
    return StatusReport(
        at=now,
        snapshot=None if snap is None else SnapshotStatus(
            revision=revision, generated_at=snap.generated_at,
            age_s=max(0.0, (now - snap.generated_at).total_seconds()), source=snap.source),
        upstreams=rows,
    )


def _rate(snap: snapshot.PolicySnapshot | None, policy: str,
          rate_used: Mapping[str, int] | None) -> RateUsage | None:
    view = snap.policies.get(policy) if snap is not None else None
    if view is None or view.ratelimit is None:
        return None
    return RateUsage(maximum=view.ratelimit.maximum, period_s=view.ratelimit.period_s,
                     used=None if rate_used is None else rate_used.get(policy, 0))


def _quotas(snap: snapshot.PolicySnapshot | None, upstream: str,
            windows: Sequence[rates.QuotaWindow] | None) -> list[QuotaUsage]:
    """The quotas of every account of ``upstream``: one per login its policies use (a
    window with no key yet has used nothing)."""
    view = snap.upstreams.get(upstream) if snap is not None else None
    if snap is None or view is None or not view.quotas:
        return []
    logins = sorted({p.credentials or "" for p in snap.policies.values()
                     if p.upstream == upstream}) or [""]
    used: dict[tuple[str, str], int] = {} if windows is None else {
        (w.credentials, w.period): w.used for w in windows if w.upstream == upstream}
    return [QuotaUsage(credentials=login, period=q.period, count=q.count, maximum=q.maximum,
                       used=None if windows is None else used.get((login, q.period), 0))
            for login in logins for q in view.quotas]


def with_queue(report: StatusReport, suspensions: Sequence[control.Suspension],
               oldest: Mapping[str, datetime]) -> StatusReport:
    """The report with each upstream's suspension (those in force) and its oldest mail;
    a suspended upstream that has no row yet gets one."""
    by_upstream = {s.upstream: s for s in suspensions
                   if s.until is None or report.at < s.until}
    rows = {row.upstream: row for row in report.upstreams}
    for upstream in by_upstream:
        rows.setdefault(upstream, UpstreamStatus(upstream=upstream, known=False))
    out: list[UpstreamStatus] = []
    for upstream, row in sorted(rows.items()):
        suspension = by_upstream.get(upstream)
        at = oldest.get(upstream) if row.queued else None
        out.append(msgspec.structs.replace(
            row, suspended=suspension is not None,
            suspended_until=suspension.until if suspension else None,
            suspended_reason=suspension.reason if suspension else "",
            oldest_at=at,
            oldest_age_s=None if at is None else max(0.0, (report.at - at).total_seconds())))
    return msgspec.structs.replace(report, upstreams=out)
