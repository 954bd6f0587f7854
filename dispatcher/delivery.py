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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import msgspec
import structlog

from dispatcher import consumers, control, holding, keyring, quotakv, recording, settling
from dispatcher.rules import backoff, classify, ledger, replyrules
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
    blocked = None if ctx.control is None else ctx.control.blocked(
        env.id, pair.upstream, msg.metadata.sequence.stream, _now())
    if blocked is not None:  # no record read, none written, no attempt, no expiry
        await settling.settle(ctx.stores, settling.Mail(
            msg=msg, envelope=env, record=mail.AttemptRecord(), had_record=False,
            policy=pair.policy, upstream=pair.upstream), control.hold(blocked, env), _now())
        return
    snap = ctx.holder.current
    view = snap.policies.get(pair.policy) if snap else None
    retry = backoff.effective(ctx.cfg.dispatcher.retry,
                              view.retry if view else None)
    record, had_record = await recording.read(ctx.stores, msg, env)
    item = settling.Mail(msg=msg, envelope=env, record=record, had_record=had_record,
                         policy=pair.policy, upstream=pair.upstream,
                         redelivered=msg.metadata.num_delivered > 1 and not had_record)
    if pair.upstream == names.CATCHER:
        await settling.catch(ctx.stores, item, _now())
        return
    rcpts = ledger.pending(env, record)
    age = backoff.age_s(env.received_at, _now())
    up = snap.upstreams.get(pair.upstream) if snap else None
    decision: classify.Decision
    if not rcpts:  # settled before, but the ack got lost
        decision = classify.Decision(attempt=0, verdicts=[])
    elif snap is None:
        decision = classify.hold(rcpts, age_s=age, policy=retry,
                                 delay_s=NO_SNAPSHOT_DELAY_S, reason="no policy snapshot yet")
    elif up is None or view is None:
        what = "upstream" if up is None else "policy"
        decision = classify.hold(rcpts, age_s=age, policy=retry, delay_s=UNKNOWN_DELAY_S,
                                 reason=f"{what} not in the snapshot")
    else:
        decision = await _attempt(ctx, item, rcpts, up, view, retry)
    await settling.settle(ctx.stores, item, decision, _now())


async def _attempt(
    ctx: Context, item: settling.Mail, rcpts: list[str], up: snapshot.UpstreamView,
    view: snapshot.PolicyView, retry: snapshot.RetryPolicy,
) -> classify.Decision:
    env = item.envelope
    creds: snapshot.Credentials | None = None
    if view.credentials:
        creds = await ctx.keyring.get(view.credentials)
        if creds is None:
            return classify.hold(rcpts, age_s=backoff.age_s(env.received_at, _now()),
                                 policy=retry, delay_s=UNKNOWN_DELAY_S,
                                 reason="login not in the credentials bucket")
    ca: snapshot.TrustedCA | None = None
    if up.tls_ca:
        ca = await ctx.keyring.ca(up.tls_ca)
        if ca is None:
            return classify.hold(rcpts, age_s=backoff.age_s(env.received_at, _now()),
                                 policy=retry, delay_s=UNKNOWN_DELAY_S,
                                 reason="the upstream's tlsCA is not in the credentials bucket")
    data = await recording.body(ctx.stores, env)
    if data is None:
        missing = outcome_mod.Outcome(failure="body", reply="the body object is missing")
        return classify.classify(missing, rcpts, attempt=0, policy=retry,
                                 age_s=backoff.age_s(env.received_at, _now()))
    taken = quotakv.NOTHING
    if ctx.quotas is not None and up.quotas:
        taken = await ctx.quotas.take(up, view.credentials, len(rcpts))
        if taken.wait_s > 0:  # over quota: a wait, never an attempt, never expired
            return classify.Decision(attempt=0, verdicts=[classify.Verdict(
                fate=classify.Fate.RETRY, rcpts=rcpts, delay_s=taken.wait_s,
                reason=taken.reason)])
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
                             policy=retry, delay_s=BUSY_DELAY_S, reason=result.reply)
    decision = classify.classify(result, rcpts, attempt=attempt, policy=retry,
                                 age_s=backoff.age_s(env.received_at, _now()),
                                 rules=replyrules.compile_rules(up.reply_rules))
    if ctx.quotas is not None and taken.parts:
        await ctx.quotas.give_back(up, taken, len(rcpts),
                                   len(decision.rcpts(classify.Fate.DELIVERED)))
    if decision.steer is not None:
        await _steer(ctx, decision.steer, up, view)
    return decision


async def _steer(ctx: Context, steer: classify.Steer, up: snapshot.UpstreamView,
                 view: snapshot.PolicyView) -> None:
    """A reply rule's ``wait`` fills the account's quota window (without quotas it
    suspends the upstream, as ``suspend`` does)."""
    if steer.action == "wait" and ctx.quotas is not None and up.quotas:
        await ctx.quotas.fill(up, view.credentials)
        return
    if ctx.control is not None:
        await ctx.control.suspend(ctx.stores.conn, up.key, steer.for_s,
                                  f"reply rule: {steer.reply}", _now())
