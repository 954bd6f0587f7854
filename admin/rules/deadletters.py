"""Dead letters as the operator commands report them, as data: the rows of ``dlq list`` and
which of them a filter keeps. The outcomes of ``dlq replay`` and ``dlq purge`` are
`runtime.requeueing`'s rows (the web console replays and purges too).

The commands print these Structs as tables (`podpost.tables`) or encode the very same
Structs with ``--json``, so people and scripts see one truth. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from schemas import mail


class DeadItem(msgspec.Struct, frozen=True, kw_only=True):
    """One dead letter as ``dlq list`` shows it; ``id`` is its DEAD stream sequence."""

    id: int
    seq: int
    mail_id: str
    policy: str
    upstream: str
    fate: str
    reason: str
    code: int | None
    reply: str
    attempts: int
    dead_at: datetime
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    mail_from: str
    rcpt_to: list[str]
    size: int
    replay_of: int | None
    body_object: str | None
    """Name of the body in the BODIES object store; None when the body is inline."""


def dead_item(seq: int, letter: mail.DeadLetter) -> DeadItem:
    env = letter.envelope
    return DeadItem(
        id=seq, seq=seq, mail_id=env.id, policy=env.policy, upstream=env.upstream,
        fate=letter.fate, reason=letter.reason, code=letter.code, reply=letter.reply,
        attempts=letter.attempts, dead_at=letter.dead_at,
        first_attempt_at=letter.first_attempt_at, last_attempt_at=letter.last_attempt_at,
        mail_from=env.mail_from, rcpt_to=list(env.rcpt_to), size=env.size,
        replay_of=env.replay_of, body_object=env.body_ref.name if env.body_ref else None,
    )


class Filter(msgspec.Struct, frozen=True, kw_only=True):
    """Which dead letters a ``--upstream``/``--policy``/``--since``/``--older-than`` keeps."""

    upstream: str | None = None
    policy: str | None = None
    dead_since: datetime | None = None
    """Keep dead letters that died at or after this time."""
    dead_before: datetime | None = None
    """Keep dead letters that died before this time."""


def keep(item: DeadItem, where: Filter) -> bool:
    if where.upstream is not None and item.upstream != where.upstream:
        return False
    if where.policy is not None and item.policy != where.policy:
        return False
    if where.dead_since is not None and item.dead_at < where.dead_since:
        return False
    return where.dead_before is None or item.dead_at < where.dead_before


def select(items: Iterable[DeadItem], where: Filter) -> list[DeadItem]:
    return [item for item in items if keep(item, where)]
