"""Failover: when a mail leaves its upstream for the policy's next fallback, and how long
an upstream has been failing. Pure: no I/O, ``now`` passed in.

A policy's sink names its server and, in order, fallback servers (``sink.smtp.fallbacks``,
like Postfix's ``smtp_fallback_relay``). Mail always starts on the primary: the ingress
queues it there, so new mail goes back to the primary as soon as it works again, and a
fallback is used only for mail the primary could not take. A mail on upstream U moves to
the first upstream after U in the chain (primary, fallbacks...) that is not suspended,
when U

- is suspended (by an operator or a reply rule),
- is over its quota for the mail's account, or
- has failed transiently for longer than ``failoverAfter`` (`Health`, per replica: the
  time since its first transient failure that no delivery followed).

The last upstream of the chain keeps its mail (retried as usual). The move itself is the
shell's (`dispatcher.settling.fail_over`): persist the copy on the target's subject, then
remove the original.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from schemas import snapshot


def chain(view: snapshot.PolicyView) -> list[str]:
    """The policy's upstreams in failover order."""
    return [view.upstream, *(f.upstream for f in view.fallbacks)]


def credentials_for(view: snapshot.PolicyView, upstream: str) -> str | None:
    """The CREDENTIALS key the policy logs in to ``upstream`` with."""
    for fallback in view.fallbacks:
        if fallback.upstream == upstream:
            return fallback.credentials
    return view.credentials


def next_upstream(view: snapshot.PolicyView, current: str,
                  suspended: Callable[[str], bool]) -> str | None:
    """The first upstream after ``current`` in the chain that is not suspended; None at
    the end of the chain (or when ``current`` is not in it)."""
    upstreams = chain(view)
    if current not in upstreams:
        return None
    for candidate in upstreams[upstreams.index(current) + 1:]:
        if not suspended(candidate):
            return candidate
    return None


def failing_too_long(failing_since: datetime | None, now: datetime, after_s: float) -> bool:
    return failing_since is not None and (now - failing_since).total_seconds() >= after_s


@dataclass
class Health:
    """Per upstream, since when it has failed transiently with no delivery since."""

    failing_since: dict[str, datetime] = field(default_factory=dict)

    def delivered(self, upstream: str) -> None:
        self.failing_since.pop(upstream, None)

    def failed(self, upstream: str, now: datetime) -> None:
        self.failing_since.setdefault(upstream, now)

    def since(self, upstream: str) -> datetime | None:
        return self.failing_since.get(upstream)
