"""What becomes of each recipient after one delivery attempt: the dispatcher's one decision.

The outcome table (docs/architecture.md, "One mail's trip", step 7), as a pure function
from an `outcome.Outcome` (exceptions already turned into data by the sending layer) to one
`Verdict` per group of recipients:

- 2xx: delivered;
- 4xx, and a session that failed to connect, negotiate TLS, answer in time or speak SMTP:
  transient, retried after `backoff.delay_for` the mail's age;
- 5xx: permanent, dead-lettered at once; except a refused login (AUTH 5xx), which is
  transient like Postfix's ``smtp_sasl_auth_soft_bounce = yes``: a wrong password is
  fixed in a Secret, and the mail queued meanwhile should go out then, not die;
- a mail that cannot be read back (``body``): dead, fate ``invalid``;
- a transient failure of a mail older than the max queue age: dead, fate ``expired``.

Before the generic rule, the upstream's reply rules and the presets (`replyrules`) may
decide: ``retry`` or ``dead`` whatever the code, ``wait`` (the account's quota is full)
and ``suspend`` (the upstream is suspended) retry the recipients without ever expiring
them and tell the shell what to do besides (`Decision.steer`).

Recipients are judged one by one and grouped by their fate and reply, so accepted,
permanently refused and temporarily refused recipients each get their own fate and none is
sent twice on purpose. Sync, no clock: ``age_s`` is computed by the caller.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import msgspec

from dispatcher.rules import backoff, replyrules
from dispatcher.rules import outcome as outcome_mod
from schemas import snapshot


class Fate(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"


class DeadFate(enum.StrEnum):
    """``DeadLetter.fate``: why a recipient will not be tried again."""

    PERMANENT = "permanent"
    EXPIRED = "expired"
    INVALID = "invalid"


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """One group of recipients that share a fate and the upstream's reply."""

    fate: Fate
    rcpts: list[str]
    dead_fate: DeadFate | None = None
    """Set when ``fate`` is DEAD."""
    code: int | None = None
    reply: str = ""
    reason: str = ""
    delay_s: float = 0.0
    """Set when ``fate`` is RETRY: seconds until the next attempt."""


class Steer(msgspec.Struct, frozen=True, kw_only=True):
    """What a reply rule asks of the shell besides the recipients' fates."""

    action: snapshot.ReplyAction
    """``wait``: mark the account's quota windows full (or, without quotas, suspend);
    ``suspend``: suspend the upstream."""
    for_s: float
    reply: str
    """The reply that matched, ``<code> <text>``: the suspension's reason."""


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    """The number of the attempt judged (1 for the first); 0 when nothing was tried."""
    verdicts: list[Verdict]
    steer: Steer | None = None
    """Set when a ``wait`` or ``suspend`` reply rule matched."""

    def of(self, fate: Fate) -> list[Verdict]:
        return [v for v in self.verdicts if v.fate is fate]

    def rcpts(self, fate: Fate) -> list[str]:
        return [rcpt for v in self.of(fate) for rcpt in v.rcpts]

    @property
    def settled(self) -> bool:
        """True when no recipient is left to retry: the message may be acked."""
        return not self.of(Fate.RETRY)

    @property
    def delay_s(self) -> float:
        """The redelivery delay of the message: the longest of its retry groups."""
        return max((v.delay_s for v in self.of(Fate.RETRY)), default=0.0)


class _Judged(msgspec.Struct, frozen=True):
    fate: Fate
    dead_fate: DeadFate | None
    code: int | None
    reply: str
    reason: str


def _judge(code: int | None, reply: str, failure: outcome_mod.Failure | None,
           *, age_s: float, policy: snapshot.RetryPolicy,
           rules: Sequence[replyrules.Rule] = ()) -> _Judged:
    if failure == "body":
        return _Judged(Fate.DEAD, DeadFate.INVALID, code, reply, "the mail cannot be read back")
    rule = replyrules.first(rules, code, reply) if rules else None
    if rule is not None:
        judged = _by_rule(rule, code, reply, age_s=age_s, policy=policy)
        if judged is not None:
            return judged
    if code is not None and 500 <= code < 600 and failure != "auth":
        stage = f"{failure} " if failure else ""
        return _Judged(Fate.DEAD, DeadFate.PERMANENT, code, reply, f"{stage}refused with {code}")
    if failure is None and code is not None and 200 <= code < 300:
        return _Judged(Fate.DELIVERED, None, code, reply, "accepted")
    if failure == "auth" and code is not None:
        why = f"login refused with {code} (check the policy's credentials)"
    else:
        why = f"{failure} failure" if failure else (
            f"deferred with {code}" if code is not None else "no verdict from the upstream")
    if backoff.expired(age_s, policy):
        return _Judged(Fate.DEAD, DeadFate.EXPIRED, code, reply,
                       f"{why}, older than the max queue age {policy.max_age_s:g}s")
    return _Judged(Fate.RETRY, None, code, reply, why)


def _by_rule(rule: replyrules.Rule, code: int | None, reply: str, *, age_s: float,
             policy: snapshot.RetryPolicy) -> _Judged | None:
    """A matched rule's judgement; None leaves it to the generic rule (``retry`` of a
    reply that is transient anyway)."""
    why = f"reply rule ({rule.source}): {rule.action}"
    if rule.action == "dead":
        return _Judged(Fate.DEAD, DeadFate.PERMANENT, code, reply, why)
    if rule.action in ("wait", "suspend"):
        return _Judged(Fate.RETRY, None, code, reply, why)
    if code is not None and 400 <= code < 500:
        return None
    if backoff.expired(age_s, policy):
        return _Judged(Fate.DEAD, DeadFate.EXPIRED, code, reply,
                       f"{why}, older than the max queue age {policy.max_age_s:g}s")
    return _Judged(Fate.RETRY, None, code, reply, why)


def _steer(result: outcome_mod.Outcome, rules: Sequence[replyrules.Rule]) -> Steer | None:
    """The first ``wait`` or ``suspend`` rule matched by the session's reply or by a
    recipient's."""
    replies = [(result.code, result.reply)] + [(r.code, r.reply) for r in result.rcpts]
    for code, reply in replies:
        rule = replyrules.first(rules, code, reply)
        if rule is not None and rule.action in ("wait", "suspend"):
            return Steer(action=rule.action, for_s=rule.duration_s,
                         reply=replyrules.reply_text(code, reply))
    return None


def classify(
    result: outcome_mod.Outcome, rcpts: Sequence[str], *, attempt: int, age_s: float,
    policy: snapshot.RetryPolicy, rules: Sequence[replyrules.Rule] = (),
) -> Decision:
    """Judge each of ``rcpts`` (the recipients this attempt was for) by ``result``.

    A recipient's own RCPT/DATA reply decides its fate. Recipients without one share the
    session's failure. While the session failed, a 2xx recorded for a recipient is not
    taken as delivered: DATA may not have completed, and a retry is better than a loss."""
    delay = backoff.delay_for(age_s, policy)
    own = {r.rcpt: r for r in result.rcpts}
    own_folded = {r.rcpt.lower(): r for r in result.rcpts}
    groups: dict[_Judged, list[str]] = {}
    for rcpt in rcpts:
        mine = own.get(rcpt) or own_folded.get(rcpt.lower())
        if mine is not None and not (result.failure and 200 <= mine.code < 300):
            judged = _judge(mine.code, mine.reply, None, age_s=age_s, policy=policy,
                            rules=rules)
        else:
            judged = _judge(result.code, result.reply, result.failure, age_s=age_s,
                            policy=policy, rules=rules)
        groups.setdefault(judged, []).append(rcpt)
    verdicts = [
        Verdict(fate=j.fate, rcpts=group, dead_fate=j.dead_fate, code=j.code, reply=j.reply,
                reason=j.reason, delay_s=delay if j.fate is Fate.RETRY else 0.0)
        for j, group in groups.items()
    ]
    steer = _steer(result, rules) if rules else None
    return Decision(attempt=attempt, verdicts=verdicts, steer=steer)


def hold(
    rcpts: Sequence[str], *, age_s: float, policy: snapshot.RetryPolicy, delay_s: float,
    reason: str,
) -> Decision:
    """Nothing could be tried (no snapshot yet, upstream or credentials unknown): try again
    after ``delay_s`` without counting an attempt, unless the mail is past its max age."""
    if backoff.expired(age_s, policy):
        return Decision(attempt=0, verdicts=[Verdict(
            fate=Fate.DEAD, rcpts=list(rcpts), dead_fate=DeadFate.EXPIRED,
            reason=f"{reason}, older than the max queue age {policy.max_age_s:g}s")])
    return Decision(attempt=0, verdicts=[
        Verdict(fate=Fate.RETRY, rcpts=list(rcpts), delay_s=delay_s, reason=reason)])
