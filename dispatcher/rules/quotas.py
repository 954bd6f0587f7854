"""Provider quotas: the calendar windows an account's use is counted in, and what one
mail costs. Pure arithmetic; `dispatcher.quotakv` keeps the counts in the RATES bucket.

A quota belongs to a provider *account*: an `SMTPServer` together with the credentials a
policy logs in with (`account`). Every policy and every replica that sends through the
same account counts into the same window, so two policies sharing a Brevo login share its
300 a day. Windows are calendar windows, not rolling ones, because that is how providers
count: a minute or hour starts on the whole minute or hour, a day at midnight, a month on
its first day, in the quota's time zone (UTC when unset; `zoneinfo`, so a day across a
daylight-saving change is 23 or 25 hours long).

Tests shrink time: with ``scale != 1`` (``dispatcher.rate_window_scale``) every period is
a fixed window of its nominal length (a day 86,400 s, a month 30 days) times ``scale``,
aligned to the epoch, like the per-policy rate limits.
"""

from __future__ import annotations

import hashlib
import zoneinfo
from datetime import UTC, datetime, timedelta, tzinfo

from schemas import snapshot

NOMINAL_S = {"minute": 60.0, "hour": 3600.0, "day": 86400.0, "month": 30 * 86400.0}
"""A period's length when windows are scaled for tests."""


def account(upstream: str, credentials: str | None) -> str:
    """A short stable id of (server, login): the account's token in RATES keys."""
    return hashlib.sha256(f"{upstream}\0{credentials or ''}".encode()).hexdigest()[:16]


def _zone(name: str | None) -> tzinfo:
    if name is None:
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return UTC  # the reconciler refuses unknown zones; an old snapshot counts in UTC


def _floor(local: datetime, period: snapshot.QuotaPeriod) -> datetime:
    if period == "minute":
        return local.replace(second=0, microsecond=0)
    if period == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    if period == "day":
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next(start: datetime, period: snapshot.QuotaPeriod) -> datetime:
    if period == "minute":
        return start + timedelta(minutes=1)
    if period == "hour":
        return start + timedelta(hours=1)
    if period == "day":
        return (start + timedelta(days=1, hours=12)).replace(hour=0)  # 23 h and 25 h days
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month, day=1)


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def window(now_ms: int, quota: snapshot.Quota, scale: float = 1.0) -> tuple[int, int]:
    """(start, end) in epoch ms of the window of ``quota`` that holds ``now_ms``."""
    if scale != 1.0:
        period = max(1, round(NOMINAL_S[quota.period] * scale * 1000))
        fixed = now_ms - now_ms % period
        return fixed, fixed + period
    zone = _zone(quota.time_zone)
    local = datetime.fromtimestamp(now_ms / 1000, zone)
    start = _floor(local, quota.period)
    end = _next(start, quota.period)
    if quota.period in ("minute", "hour"):  # whole minutes and hours in any zone we keep
        return _epoch_ms(start), _epoch_ms(end)
    return (_epoch_ms(start.replace(tzinfo=None).replace(tzinfo=zone)),
            _epoch_ms(end.replace(tzinfo=None).replace(tzinfo=zone)))


def cost(quota: snapshot.Quota, rcpts: int) -> int:
    """What one mail to ``rcpts`` recipients takes from ``quota``, never more than the
    whole quota: a mail with more recipients than the maximum goes in an empty window."""
    wanted = 1 if quota.count == "messages" else max(1, rcpts)
    return min(wanted, max(1, quota.maximum))


def allows(maximum: int, used: int, wanted: int) -> bool:
    """Whether a window with ``used`` of ``maximum`` has room for ``wanted`` more."""
    return wanted <= maximum - used


def refund(quota: snapshot.Quota, tried: int, accepted: int) -> int:
    """What goes back to the window after a mail to ``tried`` recipients, ``accepted`` of
    them accepted: a provider counts what it accepted. Messages: the whole mail when no
    recipient was accepted; recipients: those not accepted."""
    if quota.count == "messages":
        return cost(quota, tried) if accepted == 0 else 0
    return max(0, cost(quota, tried) - accepted)


def label(period: snapshot.QuotaPeriod) -> str:
    """``112/300 today``: the word for the current window."""
    return {"minute": "this minute", "hour": "this hour", "day": "today",
            "month": "this month"}[period]
