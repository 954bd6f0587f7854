"""The global rate limiter: per-policy counters in the RATES bucket, shared by every
dispatcher replica and changed only by compare-and-swap.

kube-mail reads a counter, then increments it: two replicas can both see room and both
send. Here a grant is a read followed by a write that names the revision it read (a
create when the window has no key yet); a replica that lost the race reads again, a
bounded number of times. So the count of a window never exceeds the policy's maximum,
whatever the number of replicas. Windows are fixed and aligned to the epoch
(`limiting.window_start`), keyed ``<policy-token>.<window-start-ms>`` (`schemas.rates`);
the bucket's TTL removes old ones.

After each fetch the grant is settled (`limiting.settle`): tokens that found no message
go back to their window while it lasts; messages that arrived after their window ended
are counted in the current one. The same write adds the messages that arrived to the
window's ``sent`` count (`limiting.arrived`), which is what ``podpost status`` reads: a
grant is visible in ``used`` the moment it is taken (it must be, or the limit would not
hold across replicas), but it is only mail once a message came for it. Which window a
grant came from is remembered per asyncio task (a `ContextVar`): each worker fetches in
its own task, so two workers never mix up their grants.

Failure never loses mail: a broker error or a lost race grants nothing, the mail stays in
the stream, and the worker waits and asks again. A correction that cannot be written is
dropped and logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import random
import time
from collections.abc import Callable

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from dispatcher.rules import limiting
from runtime import bus
from runtime import settings as settings_mod
from schemas import rates, snapshot

log = structlog.get_logger("dispatcher.ratekv")

CAS_TRIES = 10
"""Reads-and-writes per grant before giving up for this round (others won every race)."""
CAS_JITTER_S = 0.005
"""Up to this much random pause (times the try number) after a lost race, so the
replicas that collided do not collide again."""
WAKE_MARGIN_S = 0.005
"""Waiting for the next window sleeps this much past its start, so the next acquire
is surely in it."""


def now_ms() -> int:
    """The wall clock in epoch milliseconds: windows are aligned across processes."""
    return time.time_ns() // 1_000_000


_DEFAULT_DEADLINES = settings_mod.DeadlineSettings()


class Contended(Exception):
    """Every compare-and-swap try of one change lost its race."""


_NOT_COUNTED: tuple[type[Exception], ...] = (*bus.TRANSIENT, Contended)
"""Why a grant or a correction is dropped this round: broker trouble or lost races."""


async def compare_and_swap(kv: KeyValue, key: str,
                           change: Callable[[bytes | None], bytes | None], *,
                           timeout_s: float) -> bool:
    """Write ``change(stored value)`` (None: the key is not there) at the revision read,
    or create the key; retried on a lost race with a jittered pause, `CAS_TRIES` times,
    then `Contended`. False, and nothing written, when ``change`` returns None. Shared
    by the rate windows and the quota windows (`quotakv`)."""
    for attempt in range(CAS_TRIES):
        revision: int | None = None
        stored: bytes | None = None
        try:
            async with asyncio.timeout(timeout_s):
                entry = await kv.get(key)
            revision, stored = entry.revision, entry.value or b""
        except nats.js.errors.KeyNotFoundError:
            pass
        value = change(stored)
        if value is None:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                if revision is None:
                    await kv.create(key, value)
                else:
                    await kv.update(key, value, last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            await asyncio.sleep(random.uniform(0, CAS_JITTER_S * (attempt + 1)))
            continue
        return True
    raise Contended(f"{CAS_TRIES} compare-and-swap tries lost on {key}")


@dataclasses.dataclass(frozen=True)
class _Grant:
    """The last grant of one task, until it is settled: its window and size."""

    window: rates.RateWindow
    tokens: int
    task: asyncio.Task[object] | None
    """The task that was granted them: a task it starts inherits the variable, not the
    grant."""


_last_grant: contextvars.ContextVar[_Grant | None] = contextvars.ContextVar(
    "podpost_last_rate_grant", default=None)


class KvLimiter:
    """`limiting.Limiter` over a KV bucket; policies without a rate limit cost no I/O.
    Each counter read or write has the ``kv_s`` deadline of ``deadlines`` (a connection's
    ``conn.deadlines``); a slower broker grants nothing this round."""

    def __init__(
        self, kv: KeyValue, *, scale: float = 1.0, clock: Callable[[], int] = now_ms,
        deadlines: settings_mod.DeadlineSettings = _DEFAULT_DEADLINES,
    ) -> None:
        self._kv = kv
        self._timeout_s = deadlines.kv_s
        self._scale = scale
        self._clock = clock

    async def acquire(
        self, policy_key: str, ratelimit: snapshot.RateLimit | None, want: int
    ) -> int:
        _last_grant.set(None)
        if ratelimit is None:
            return max(0, want)
        if want <= 0:
            return 0
        period = limiting.period_ms(ratelimit, self._scale)
        start = limiting.window_start(self._clock(), period)
        key = rates.window_key(policy_key, start)
        window = rates.RateWindow(policy=policy_key, start_ms=start, period_ms=period,
                                  maximum=ratelimit.maximum)
        try:
            before, after = await self._swap(
                key, window, lambda used, sent: (
                    used + limiting.grant(ratelimit.maximum, used, want), sent))
        except _NOT_COUNTED as exc:
            log.warning("dispatcher.rate_count_failed", policy=policy_key, window=key,
                        error=str(exc) or type(exc).__name__)
            return 0
        granted = after - before
        if granted > 0:
            _last_grant.set(_Grant(window=window, tokens=granted, task=asyncio.current_task()))
        return granted

    async def refund(
        self, policy_key: str, ratelimit: snapshot.RateLimit | None, unused: int
    ) -> None:
        grant = _last_grant.get()
        if (ratelimit is None or grant is None or grant.window.policy != policy_key
                or grant.task is not asyncio.current_task()):
            return
        _last_grant.set(None)  # a grant is settled once
        period = limiting.period_ms(ratelimit, self._scale)
        unused = min(unused, grant.tokens)
        start, delta = limiting.settle(grant.window.start_ms, grant.tokens, unused,
                                       self._clock(), period)
        sent = limiting.arrived(grant.tokens, unused)
        if delta == 0 and sent == 0:
            return
        window = grant.window
        if start != window.start_ms:
            window = rates.RateWindow(policy=policy_key, start_ms=start, period_ms=period,
                                      maximum=ratelimit.maximum)
        key = rates.window_key(policy_key, start)
        try:
            await self._swap(key, window, lambda used, was_sent: (
                limiting.adjusted(used, delta), was_sent + sent))
        except _NOT_COUNTED as exc:
            log.warning("dispatcher.rate_correction_dropped", policy=policy_key, window=key,
                        delta=delta, sent=sent, error=str(exc) or type(exc).__name__)

    async def wait(
        self, policy_key: str, ratelimit: snapshot.RateLimit | None, max_s: float
    ) -> None:
        if ratelimit is None:
            return
        delay = limiting.wait_s(self._clock(), limiting.period_ms(ratelimit, self._scale),
                                max_s)
        await asyncio.sleep(min(max(0.0, max_s), delay + WAKE_MARGIN_S))

    async def _swap(
        self, key: str, window: rates.RateWindow, step: Callable[[int, int], tuple[int, int]]
    ) -> tuple[int, int]:
        """Apply ``step`` ((used, sent) -> new (used, sent)) to the window's key by
        compare-and-swap; (used before, used after). A key that does not decode counts as
        full."""
        swapped = (0, 0)

        def change(stored: bytes | None) -> bytes | None:
            nonlocal swapped
            used = sent = 0
            if stored is not None:
                try:
                    window_then = rates.window_decoder.decode(stored)
                    used, sent = window_then.used, window_then.sent
                except msgspec.DecodeError:
                    log.error("dispatcher.rate_window_invalid", window=key)
                    used = window.maximum
            new, new_sent = step(used, sent)
            if (new, new_sent) == (used, sent):
                swapped = (used, used)
                return None
            swapped = (used, new)
            return rates.window_encoder.encode(
                msgspec.structs.replace(window, used=new, sent=new_sent))

        await compare_and_swap(self._kv, key, change, timeout_s=self._timeout_s)
        return swapped
