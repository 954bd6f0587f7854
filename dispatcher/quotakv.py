"""Provider quotas counted in the RATES bucket, per account and calendar window, shared
by every policy and replica, and changed only by compare-and-swap.

Before a mail to an upstream with quotas is attempted, `QuotaCounter.take` takes its cost
(`quotas.cost`: 1, or its recipients) from the current window of every quota of the
account (the upstream with the policy's login). A window without room takes nothing:
what was already taken from the account's other quotas goes back, and the trip holds the
mail until that window ends (a nak that is no attempt, never a dead letter; at most
`RECHECK_S`, so a raised quota is seen). After the attempt `give_back` returns what the
provider did not accept (`quotas.refund`). A reply rule's ``wait`` (the provider says the
quota is used up, whatever we counted) marks a window full with `fill`.

Taking is per mail, not per fetch like the per-policy rate limits: only a fetched mail
tells how many recipients it has, and a quota of recipients must count them. It costs two
KV round trips per mail, and only for upstreams that declare quotas. A broker error or a
lost race takes nothing: the mail waits and is looked at again (`BUSY_S`); nothing is
lost, and a window never counts more than its maximum.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import structlog
from nats.js.kv import KeyValue

from dispatcher import ratekv
from dispatcher.ratekv import now_ms
from dispatcher.rules import quotas
from runtime import bus
from runtime import settings as settings_mod
from schemas import rates, snapshot

log = structlog.get_logger("dispatcher.quotakv")

RECHECK_S = 300.0
"""The longest a mail over quota waits before it is looked at again."""
BUSY_S = 2.0
"""The wait after the counter could not be read or written."""


@dataclass(frozen=True)
class Taken:
    """What one mail took (``parts``: key, window, amount), or why it must wait."""

    parts: tuple[tuple[str, rates.QuotaWindow, int], ...] = ()
    wait_s: float = 0.0
    """> 0: nothing was taken; look again after this long."""
    reason: str = ""


NOTHING = Taken()


_NOT_COUNTED: tuple[type[Exception], ...] = (*bus.TRANSIENT, ratekv.Contended)


def _taking(amount: int, maximum: int) -> Callable[[int], int]:
    return lambda used: used + amount if quotas.allows(maximum, used, amount) else used


def _returning(amount: int) -> Callable[[int], int]:
    return lambda used: max(0, used - amount)


class QuotaCounter:
    def __init__(self, kv: KeyValue, *, scale: float = 1.0,
                 clock: Callable[[], int] = now_ms,
                 deadlines: settings_mod.DeadlineSettings | None = None) -> None:
        self._kv = kv
        self._scale = scale
        self._clock = clock
        self._timeout_s = (deadlines or settings_mod.DeadlineSettings()).kv_s

    def _window(self, up: snapshot.UpstreamView, credentials: str | None,
                quota: snapshot.Quota, at_ms: int) -> tuple[str, rates.QuotaWindow]:
        start, end = quotas.window(at_ms, quota, self._scale)
        acct = quotas.account(up.key, credentials)
        window = rates.QuotaWindow(
            upstream=up.key, credentials=credentials or "", account=acct,
            period=quota.period, count=quota.count, start_ms=start, end_ms=end,
            maximum=quota.maximum)
        return rates.quota_key(up.key, acct, quota.period, start), window

    async def take(self, up: snapshot.UpstreamView, credentials: str | None,
                   rcpts: int) -> Taken:
        """Take one mail's cost from every quota of the account, all or nothing."""
        if not up.quotas:
            return NOTHING
        now = self._clock()
        parts: list[tuple[str, rates.QuotaWindow, int]] = []
        for quota in up.quotas:
            key, window = self._window(up, credentials, quota, now)
            amount = quotas.cost(quota, rcpts)
            try:
                ok = await self._swap(key, window, _taking(amount, quota.maximum))
            except _NOT_COUNTED as exc:
                log.warning("dispatcher.quota_count_failed", upstream=up.key, window=key,
                            error=str(exc) or type(exc).__name__)
                await self._return(parts)
                return Taken(wait_s=BUSY_S, reason="the quota counter is unavailable")
            if not ok:
                await self._return(parts)
                left = max(0.05, (window.end_ms - now) / 1000)
                return Taken(wait_s=min(RECHECK_S, left), reason=(
                    f"quota {quota.maximum} {quota.count} per {quota.period} used up"))
            parts.append((key, window, amount))
        return Taken(parts=tuple(parts))

    async def give_back(self, up: snapshot.UpstreamView, taken: Taken, tried: int,
                        accepted: int) -> None:
        """Return what the provider did not accept to the windows it was taken from."""
        by_period = {q.period: q for q in up.quotas}
        back = []
        for key, window, amount in taken.parts:
            quota = by_period.get(window.period)  # type: ignore[call-overload]
            if quota is not None:
                back.append((key, window, min(amount, quotas.refund(quota, tried, accepted))))
        await self._return(back)

    async def fill(self, up: snapshot.UpstreamView, credentials: str | None) -> float | None:
        """The provider says the quota is used up: mark the account's day window full
        (else its shortest); seconds until it ends, or None without quotas."""
        if not up.quotas:
            return None
        order = sorted(up.quotas, key=lambda q: (q.period != "day",
                                                 quotas.NOMINAL_S[q.period]))
        quota = order[0]
        now = self._clock()
        key, window = self._window(up, credentials, quota, now)
        try:
            await self._swap(key, window, functools.partial(max, quota.maximum))
        except _NOT_COUNTED as exc:
            log.warning("dispatcher.quota_fill_failed", upstream=up.key, window=key,
                        error=str(exc) or type(exc).__name__)
        return max(0.05, (window.end_ms - now) / 1000)

    async def _return(self, parts: list[tuple[str, rates.QuotaWindow, int]]
                      | tuple[tuple[str, rates.QuotaWindow, int], ...]) -> None:
        for key, window, amount in parts:
            if amount <= 0 or self._clock() >= window.end_ms:
                continue  # an ended window is never read again
            try:
                await self._swap(key, window, _returning(amount))
            except _NOT_COUNTED as exc:
                log.warning("dispatcher.quota_refund_dropped", window=key, amount=amount,
                            error=str(exc) or type(exc).__name__)

    async def _swap(self, key: str, window: rates.QuotaWindow,
                    step: Callable[[int], int]) -> bool:
        """Apply ``step`` (used -> new used) by compare-and-swap; False when ``step``
        changed nothing. A value that does not decode counts as full."""
        def change(stored: bytes | None) -> bytes | None:
            used = 0
            if stored is not None:
                try:
                    used = rates.quota_decoder.decode(stored).used
                except msgspec.DecodeError:
                    log.error("dispatcher.quota_window_invalid", window=key)
                    used = window.maximum
            new = step(used)
            if new == used:
                return None
            return rates.quota_encoder.encode(msgspec.structs.replace(window, used=new))

        return await ratekv.compare_and_swap(self._kv, key, change, timeout_s=self._timeout_s)

