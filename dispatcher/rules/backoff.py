"""When to try a deferred mail again, computed by podpost rather than JetStream.

JetStream's consumer BackOff only applies to ack timeouts, not to ``nak``; and podpost's
attempt count is its own (rate-limit waits and crash redeliveries are no attempts). So the
delay of every ``nak(delay=...)`` comes from here.

The rule is Postfix's: the delay is the mail's age clamped to [min_delay_s, max_delay_s],
so retries thin out as a mail ages (5 min, 5 min, 10 min, 20 min, ... at most 67 min), and
a mail older than max_age_s is given up. The schedule is data: the dispatcher's global
`RetryPolicy`, overridden field by field by a policy's ``spec.retry``. Pure: no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import snapshot


def age_s(received_at: datetime, now: datetime) -> float:
    """Seconds since the mail was received; a naive time is taken as UTC."""
    if received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=UTC)
    return (now - received_at).total_seconds()


def effective(
    base: snapshot.RetryPolicy, override: snapshot.RetryOverride | None
) -> snapshot.RetryPolicy:
    """The global schedule with each field the policy sets replaced by the policy's.

    A policy that raises ``min_delay_s`` above the global ``max_delay_s`` (or lowers max
    below min) still gets a sane window: max is never below min."""
    if override is None:
        return base
    min_delay = base.min_delay_s if override.min_delay_s is None else override.min_delay_s
    max_delay = base.max_delay_s if override.max_delay_s is None else override.max_delay_s
    max_age = base.max_age_s if override.max_age_s is None else override.max_age_s
    return snapshot.RetryPolicy(
        min_delay_s=min_delay, max_delay_s=max(min_delay, max_delay), max_age_s=max_age
    )


def delay_for(age_s: float, policy: snapshot.RetryPolicy) -> float:
    """Seconds until the next attempt of a mail ``age_s`` old: its age clamped to the
    policy's window. A negative age (clock skew between replicas) counts as zero."""
    low = max(0.0, policy.min_delay_s)
    high = max(low, policy.max_delay_s)
    return min(max(age_s, low), high)


def expired(age_s: float, policy: snapshot.RetryPolicy) -> bool:
    """True when a mail this old must not be deferred again (Postfix's
    maximal_queue_lifetime)."""
    return age_s >= policy.max_age_s
