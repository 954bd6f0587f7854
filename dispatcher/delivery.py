"""One message's trip, from a fetched message to its settled fate.

decode the `Envelope` -> read the `AttemptRecord` if the message was seen before
(`recording.read`) -> skip the settled recipients (`ledger.pending`) -> the catcher keeps
it, or the pool delivers it to the upstream -> `classify` decides each recipient's fate ->
`settling` persists, then acks or naks, then reports.

A trip whose lease ran out before the upstream was asked stops there (`holding`): the
message has been, or will be, handed to someone else. Nothing to try with (no snapshot
yet, upstream, policy or login unknown) is a *hold*: a short nak that is not counted as an
attempt. So is a mail the operator held, whose upstream is suspended or that is being
moved (`control`); that hold never dead-letters it. A mail whose body object is gone
cannot be sent: `classify` dead-letters it (``failure="body"``) without an attempt. This
module reads and decides; it acks nothing, writes nothing and reports nothing itself:
what it learns goes to `settling`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import msgspec
import structlog

from dispatcher import consumers, control, holding, keyring, quotakv, recording, settling
from dispatcher.rules import backoff, classify, failover, ledger, replyrules
from dispatcher.rules import outcome as outcome_mod
from runtime import policies
from runtime import settings as settings_mod
from schemas import mail, names, snapshot

NO_SNAPSHOT_DELAY_S = 1.0
"""Hold before the first snapshot arrived: it comes within a poll or two."""
BUSY_DELAY_S = 1.0
"""Hold when every connection slot of the installation's cap stayed taken."""
UNKNOWN_DELAY_S = 5.0
"""Hold when the upstream, policy or login is not (yet) known."""


class Deliverer(Protocol):
    """What a trip needs of `pool.Pool`."""

    async def deliver(
        self, upstream: snapshot.UpstreamView, creds: snapshot.Credentials | None,
        mail_from: str, rcpts: Sequence[str], data: bytes, *,
        ca: snapshot.TrustedCA | None = None,
    ) -> outcome_mod.Outcome: ...


@dataclass(frozen=True)
class Context:
    """What every trip of one dispatcher process uses."""

    cfg: settings_mod.Settings
    holder: policies.SnapshotHolder
    pool: Deliverer
    stores: recording.Stores
    keyring: keyring.Keyring
    control: control.Control | None = None
    """The operator's steering (suspended upstreams, held mails); None: none."""
    quotas: quotakv.QuotaCounter | None = None
    """The provider accounts' quotas; None: not enforced."""
    health: failover.Health = dataclasses.field(default_factory=failover.Health)
    """Since when each upstream has failed transiently (this replica's view)."""


def _now() -> datetime:
    return datetime.now(UTC)


async def handle(ctx: Context, pair: consumers.Pair, msg: holding.Held) -> None:
    """One message from fetch to ack or nak."""
    structlog.contextvars.clear_contextvars()
    try:
        env = mail.envelope_decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        await settling.undecodable(msg, str(exc))
        return
    structlog.contextvars.bind_contextvars(
        mail_id=env.id, policy=pair.policy, upstream=pair.upstream)
    now = _now()
    seq = msg.metadata.sequence.stream
    blocked = None if ctx.control is None else ctx.control.blocked(env.id, pair.upstream, seq,
                                                                  now)
    snap = ctx.holder.current
    view = snap.policies.get(pair.policy) if snap else None
    if blocked is not None and not _may_leave(ctx, view, env.id, seq, pair.upstream, now):
        # no record read, none written, no attempt, no expiry
        await settling.settle(ctx.stores, settling.Mail(
            msg=msg, envelope=env, record=mail.AttemptRecord(), had_record=False,
            policy=pair.policy, upstream=pair.upstream), control.hold(blocked, env), now)
        return
    retry = backoff.effective(ctx.cfg.dispatcher.retry,
                              view.retry if view else None)
    record, had_record = await recording.read(ctx.stores, msg, env)
    item = settling.Mail(msg=msg, envelope=env, record=record, had_record=had_record,
                         policy=pair.policy, upstream=pair.upstream,
                         redelivered=msg.metadata.num_delivered > 1 and not had_record)
    if record.moved_to and record.moved_seq == seq:  # failed over before the ack was lost
        await settling.moved_again(ctx.stores, item, now)
        return
    if pair.upstream == names.CATCHER:
        await settling.catch(ctx.stores, item, now)
        return
    rcpts = ledger.pending(env, record)
    age = backoff.age_s(env.received_at, now)
    up = snap.upstreams.get(pair.upstream) if snap else None
    decision: classify.Decision
    target: str | None = None
    if not rcpts:  # settled before, but the ack got lost
        decision = classify.Decision(attempt=0, verdicts=[])
    elif blocked is not None and view is not None:  # suspended, with a fallback
        decision = classify.Decision(attempt=0, verdicts=[classify.Verdict(
            fate=classify.Fate.RETRY, rcpts=rcpts, delay_s=blocked.delay_s,
            reason=blocked.reason)])
        target = _target(ctx, view, pair.upstream, now)
    elif snap is None:
        decision = classify.hold(rcpts, age_s=age, policy=retry,
                                 delay_s=NO_SNAPSHOT_DELAY_S, reason="no policy snapshot yet")
    elif up is None or view is None:
        what = "upstream" if up is None else "policy"
        decision = classify.hold(rcpts, age_s=age, policy=retry, delay_s=UNKNOWN_DELAY_S,
                                 reason=f"{what} not in the snapshot")
    else:
        decision, target = await _attempt(ctx, item, rcpts, up, view, retry)
    if target is not None and not decision.settled:
        await settling.fail_over(ctx.stores, item, decision, target, _now())
    else:
        await settling.settle(ctx.stores, item, decision, _now())


def _suspended(ctx: Context, now: datetime) -> Callable[[str], bool]:
    return lambda upstream: ctx.control is not None and ctx.control.suspended(upstream, now)


def _may_leave(ctx: Context, view: snapshot.PolicyView | None, mail_id: str, seq: int,
               upstream: str, now: datetime) -> bool:
    """A blocked mail that may fail over instead: blocked only because its upstream is
    suspended (not held, not being moved), with a fallback that is not."""
    if ctx.control is None or view is None or not view.fallbacks:
        return False
    if ctx.control.blocked(mail_id, "", seq, now) is not None:  # held or being moved
        return False
    return _target(ctx, view, upstream, now) is not None


def _target(ctx: Context, view: snapshot.PolicyView, upstream: str, now: datetime
            ) -> str | None:
    return failover.next_upstream(view, upstream, _suspended(ctx, now))


async def _attempt(
    ctx: Context, item: settling.Mail, rcpts: list[str], up: snapshot.UpstreamView,
    view: snapshot.PolicyView, retry: snapshot.RetryPolicy,
) -> tuple[classify.Decision, str | None]:
    """The attempt's decision, and the upstream to fail over to, if the mail should."""
    login = failover.credentials_for(view, up.key)
    decision, over_quota = await _try(ctx, item, rcpts, up, view, retry, login)
    if decision.settled or not view.fallbacks:
        return decision, None
    failing = decision.attempt > 0 and failover.failing_too_long(
        ctx.health.since(up.key), _now(), view.failover_after_s)
    if over_quota or decision.steer is not None or failing:  # full, suspended or down
        return decision, _target(ctx, view, up.key, _now())
    return decision, None


async def _try(
    ctx: Context, item: settling.Mail, rcpts: list[str], up: snapshot.UpstreamView,
    view: snapshot.PolicyView, retry: snapshot.RetryPolicy, login: str | None,
) -> tuple[classify.Decision, bool]:
    """One attempt's decision, and whether the account was over its quota (nothing
    tried)."""
    env = item.envelope
    creds: snapshot.Credentials | None = None
    if login:
        creds = await ctx.keyring.get(login)
        if creds is None:
            return classify.hold(rcpts, age_s=backoff.age_s(env.received_at, _now()),
                                 policy=retry, delay_s=UNKNOWN_DELAY_S,
                                 reason="login not in the credentials bucket"), False
    ca: snapshot.TrustedCA | None = None
    if up.tls_ca:
        ca = await ctx.keyring.ca(up.tls_ca)
        if ca is None:
            return classify.hold(rcpts, age_s=backoff.age_s(env.received_at, _now()),
                                 policy=retry, delay_s=UNKNOWN_DELAY_S,
                                 reason="the upstream's tlsCA is not in the credentials bucket"
                                 ), False
    data = await recording.body(ctx.stores, env)
    if data is None:
        missing = outcome_mod.Outcome(failure="body", reply="the body object is missing")
        return classify.classify(missing, rcpts, attempt=0, policy=retry,
                                 age_s=backoff.age_s(env.received_at, _now())), False
    taken = quotakv.NOTHING
    if ctx.quotas is not None and up.quotas:
        taken = await ctx.quotas.take(up, login, len(rcpts))
        if taken.wait_s > 0:  # over quota: a wait, never an attempt, never expired
            return classify.Decision(attempt=0, verdicts=[classify.Verdict(
                fate=classify.Fate.RETRY, rcpts=rcpts, delay_s=taken.wait_s,
                reason=taken.reason)]), True
    if not item.msg.leased(asyncio.get_running_loop().time()):
        # Frozen or starved past the ack wait: the server has handed (or will hand) the
        # message to someone else, who will deliver it; sending now could send it twice.
        if ctx.quotas is not None and taken.parts:
            await ctx.quotas.give_back(up, taken, len(rcpts), 0)
        raise settling.LeaseLost("the lease ran out before the upstream was asked")
    attempt = item.record.attempts + 1
    structlog.contextvars.bind_contextvars(attempt=attempt)
    await settling.attempted(ctx.stores.conn, item, attempt, len(rcpts), _now())
    result = await ctx.pool.deliver(up, creds, env.mail_from, rcpts, data, ca=ca)
    if result.failure == "busy":  # nothing sent: every connection slot is taken
        if ctx.quotas is not None and taken.parts:
            await ctx.quotas.give_back(up, taken, len(rcpts), 0)
        return classify.hold(rcpts, age_s=backoff.age_s(env.received_at, _now()),
                             policy=retry, delay_s=BUSY_DELAY_S, reason=result.reply), False
    decision = classify.classify(result, rcpts, attempt=attempt, policy=retry,
                                 age_s=backoff.age_s(env.received_at, _now()),
                                 rules=replyrules.compile_rules(up.reply_rules))
    delivered = len(decision.rcpts(classify.Fate.DELIVERED))
    if ctx.quotas is not None and taken.parts:
        await ctx.quotas.give_back(up, taken, len(rcpts), delivered)
    if delivered:
        ctx.health.delivered(up.key)
    elif decision.of(classify.Fate.RETRY):
        ctx.health.failed(up.key, _now())
    if decision.steer is not None:
        await _steer(ctx, decision.steer, up, login)
    return decision, False


async def _steer(ctx: Context, steer: classify.Steer, up: snapshot.UpstreamView,
                 login: str | None) -> None:
    """A reply rule's ``wait`` fills the account's quota window (without quotas it
    suspends the upstream, as ``suspend`` does)."""
    if steer.action == "wait" and ctx.quotas is not None and up.quotas:
        await ctx.quotas.fill(up, login)
        return
    if ctx.control is not None:
        await ctx.control.suspend(ctx.stores.conn, up.key, steer.for_s,
                                  f"reply rule: {steer.reply}", _now())
