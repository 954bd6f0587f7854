"""The seam for per-policy rate limits that hold across all dispatcher replicas.

Before each fetch a worker asks its `Limiter` how many messages of one policy it may take
now, and fetches no more than that: mail it has no token for stays in the stream (for
another replica, or for later) instead of being fetched and naked, so a rate-limit wait is
never a failed attempt. The contract:

- ``granted = await limiter.acquire(policy_key, ratelimit, want)`` returns 0..want tokens,
  each one message the worker may fetch and send now. ``ratelimit`` is the policy's
  `snapshot.RateLimit` (``None``: unlimited).
- The worker fetches ``granted`` messages; when fewer arrive it gives the rest back with
  ``await limiter.refund(policy_key, ratelimit, unused)``.
- ``granted == 0``: the worker fetches nothing and calls
  ``await limiter.wait(policy_key, ratelimit, max_s)``, which returns once the window may
  allow more (or after at most ``max_s``), then asks again.

Only the trivial `Unlimited` lives here for now; the global counting limiter (issue 5)
implements the same three methods.
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
