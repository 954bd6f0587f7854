"""The seam for per-policy rate limits that hold across all dispatcher replicas.

Before each fetch a worker asks its `Limiter` how many messages of one policy it may take
now, and fetches no more than that: mail it has no token for stays in the stream (for
another replica, or for later) instead of being fetched and naked, so a rate-limit wait is
never a failed attempt. The contract:

- ``granted = await limiter.acquire(policy_key, ratelimit, want)`` returns 0..want tokens,
  each one message the worker may fetch and send now. ``ratelimit`` is the policy's
  `snapshot.RateLimit` (``None``: unlimited).
- The worker fetches ``granted`` messages, then settles the grant with
  ``await limiter.refund(policy_key, ratelimit, unused)``, ``unused = granted - arrived``:
  positive when fewer arrived (those tokens go back), 0 when all did, negative when more
  did (nats-py hands over messages an earlier pull left in its queue).
- ``granted == 0``: the worker fetches nothing and calls
  ``await limiter.wait(policy_key, ratelimit, max_s)``, which returns once the window may
  allow more (or after at most ``max_s``), then asks again.

`Unlimited` grants everything. The global limiter, `dispatcher.ratekv.KvLimiter`, counts
each policy's messages in fixed windows aligned to the epoch, in a JetStream KV bucket
shared by all replicas and updated only by compare-and-swap; its arithmetic is here, pure:
the window a moment falls in (`window_start`), what may be granted (`grant`), which window
a fetch is finally counted in (`settle`, `adjusted`) and how long to wait for the next
window (`wait_s`). Times are integer epoch milliseconds, so every replica computes the
same window boundaries.

A message counts in the window in which its fetch returned, that is when it is sent: a
worker waiting for mail holds a token up to its fetch timeout, and when the mail comes
after its window has ended, it is counted in the new window (even past the maximum, so
the others are granted that much less) and the old window keeps the token.

A token held by a waiting fetch limits like a sent message but is not one: the counter
keeps what was granted (``used``, which the limit is enforced on) apart from what found a
message (``sent``, `arrived`), so ``podpost status`` reports mail, not reservations.
"""

from __future__ import annotations

from typing import Protocol

from schemas import snapshot


class Limiter(Protocol):
    async def acquire(
        self, policy_key: str, ratelimit: snapshot.RateLimit | None, want: int
    ) -> int: ...

    async def refund(
        self, policy_key: str, ratelimit: snapshot.RateLimit | None, unused: int
    ) -> None: ...

    async def wait(
        self, policy_key: str, ratelimit: snapshot.RateLimit | None, max_s: float
    ) -> None: ...


class Unlimited:
    """Grants everything asked for; rate limits are not enforced."""

    async def acquire(
        self, policy_key: str, ratelimit: snapshot.RateLimit | None, want: int
    ) -> int:
        return max(0, want)

    async def refund(
        self, policy_key: str, ratelimit: snapshot.RateLimit | None, unused: int
    ) -> None:
        return None

    async def wait(
        self, policy_key: str, ratelimit: snapshot.RateLimit | None, max_s: float
    ) -> None:
        return None


# --- window arithmetic (pure) -------------------------------------------------------------


def period_ms(ratelimit: snapshot.RateLimit, scale: float = 1.0) -> int:
    """The window length in milliseconds: the policy's period times ``scale`` (tests
    shrink a minute to seconds), at least one millisecond."""
    return max(1, round(ratelimit.period_s * scale * 1000))


def window_start(now_ms: int, period: int) -> int:
    """Start of the window holding ``now_ms``: windows are aligned to the epoch, so every
    replica agrees on the boundaries (up to its clock's skew)."""
    return now_ms - now_ms % period


def grant(maximum: int, used: int, want: int) -> int:
    """Tokens to grant from a window with ``used`` of ``maximum`` taken: as many as asked,
    never more than what is left, never negative."""
    return max(0, min(want, maximum - used))


def adjusted(used: int, delta: int) -> int:
    """The count after a correction; never below zero."""
    return max(0, used + delta)


def settle(granted_start: int, tokens: int, unused: int, now_ms: int, period: int
           ) -> tuple[int, int]:
    """After a fetch made with ``tokens`` from the window starting at ``granted_start``:
    which window to correct, and by how much. Still in that window: by what arrived less
    what was granted (``-unused``; negative is a refund). That window is over: the
    messages that arrived count in the window holding ``now_ms``."""
    current = window_start(now_ms, period)
    if current == granted_start:
        return granted_start, -unused
    return current, max(0, tokens - unused)


def arrived(tokens: int, unused: int) -> int:
    """Messages a fetch made with ``tokens`` got, ``unused`` of them left over (negative:
    more arrived than granted); never negative. They are counted as sent in the window
    `settle` names."""
    return max(0, tokens - unused)


def wait_s(now_ms: int, period: int, max_s: float) -> float:
    """Seconds until the next window starts, at most ``max_s``, never negative."""
    until = (window_start(now_ms, period) + period - now_ms) / 1000
    return max(0.0, min(max_s, until))
