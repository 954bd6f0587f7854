"""podpost's own bookkeeping of one mail's attempts, kept in the ATTEMPTS bucket.

The JetStream delivery counter also counts rate-limit waits, "upstream unknown" holds and
redeliveries after a crash, so it is not the attempt count. The `AttemptRecord` is, and it
remembers the recipients already settled so a redelivered message never sends to them
again. This module computes records and the dead letters' dedupe ids; the worker stores
them. Pure: no I/O, explicit ``now``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from dispatcher.rules import classify
from schemas import mail


def pending(envelope: mail.Envelope, record: mail.AttemptRecord) -> list[str]:
    """The recipients of ``envelope`` not yet settled, in their original order."""
    done = set(record.done)
    return [rcpt for rcpt in envelope.rcpt_to if rcpt not in done]


def after(
    record: mail.AttemptRecord, decision: classify.Decision, *, now: datetime, policy: str,
    upstream: str,
) -> mail.AttemptRecord:
    """The record once ``decision`` is acted on. A decision without an attempt (``hold``)
    changes no count and no attempt time."""
    counted = decision.attempt > 0
    dead = [rcpt for rcpt in decision.rcpts(classify.Fate.DEAD) if rcpt not in record.done]
    settled = [
        rcpt for rcpt in decision.rcpts(classify.Fate.DELIVERED) if rcpt not in record.done
    ] + dead
    last = _last_word(decision)
    next_at = None if decision.settled else now + timedelta(seconds=decision.delay_s)
    return msgspec.structs.replace(
        record,
        attempts=decision.attempt if counted else record.attempts,
        policy=policy,
        upstream=upstream,
        first_attempt_at=record.first_attempt_at or (now if counted else None),
        last_attempt_at=now if counted else record.last_attempt_at,
        next_attempt_at=next_at,
        last_code=last.code if last is not None else record.last_code,
        last_reply=last.reply if last is not None else record.last_reply,
        done=[*record.done, *settled],
        dead=[*record.dead, *dead],
    )


def _last_word(decision: classify.Decision) -> classify.Verdict | None:
    """The reply worth remembering: a deferral's first, else a refusal's, else any."""
    for fate in (classify.Fate.RETRY, classify.Fate.DEAD, classify.Fate.DELIVERED):
        for verdict in decision.of(fate):
            if verdict.code is not None or verdict.reply:
                return verdict
    return None


def dead_letter_id(attempts_key: str, rcpts: Sequence[str]) -> str:
    """``Nats-Msg-Id`` of the dead letter for these recipients of this mail (a replay has
    its own attempts key), so a retried publish after a lost PubAck is stored once."""
    digest = hashlib.sha256("\n".join(sorted(rcpts)).encode()).hexdigest()[:16]
    return f"{attempts_key}.dead.{digest}"
