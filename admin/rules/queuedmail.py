"""Mail waiting in the MAIL stream as ``podpost queue`` reports it, as data: the rows of
``queue list`` and ``queue show``, the operator's steering they are subject to, which rows
a filter keeps, and the outcomes of the queue's actions.

A row joins three reads: the envelope (by MAIL sequence), its attempt record (ATTEMPTS:
attempts, last reply, next attempt) and the CONTROL bucket (held, suspended, being
moved). Its state:

- ``held``: no dispatcher tries it now: the mail is held, its upstream suspended, or a
  move of it is under way (``held_by`` says which);
- ``deferred``: tried before and waiting for its next attempt (``next_attempt_at``);
- ``waiting``: not tried yet: due as soon as a dispatcher has a slot and a token.

Pure: no I/O, ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

import msgspec

from schemas import control, mail, names

WAITING = "waiting"
DEFERRED = "deferred"
HELD = "held"
STATES = (WAITING, DEFERRED, HELD)

HOLD = "hold"
SUSPENDED = "suspended"
MOVING = "moving"


class Steering(msgspec.Struct, frozen=True, kw_only=True):
    """The CONTROL bucket's entries, by kind."""

    suspended: dict[str, control.Suspension] = {}
    held: dict[str, control.Hold] = {}
    moving: dict[int, control.Moving] = {}
    unreadable: int = 0


def steering(entries: Mapping[str, bytes]) -> Steering:
    """The entries of the CONTROL bucket (key -> value of each live key), folded."""
    suspended: dict[str, control.Suspension] = {}
    held: dict[str, control.Hold] = {}
    moving: dict[int, control.Moving] = {}
    bad = 0
    for key, value in entries.items():
        try:
            if key.startswith(names.SUSPEND):
                suspension = control.suspension_decoder.decode(value)
                suspended[suspension.upstream] = suspension
            elif key.startswith(names.HOLD):
                hold = control.hold_decoder.decode(value)
                held[hold.mail_id] = hold
            elif key.startswith(names.MOVING):
                move = control.moving_decoder.decode(value)
                moving[move.seq] = move
            else:
                bad += 1
        except msgspec.DecodeError:
            bad += 1
    return Steering(suspended=suspended, held=held, moving=moving, unreadable=bad)


def active(suspension: control.Suspension, now: datetime) -> bool:
    """A suspension holds until resumed, or until its ``until``."""
    return suspension.until is None or now < suspension.until


class QueuedItem(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the MAIL stream; ``id`` is its MAIL stream sequence."""

    id: int
    seq: int
    mail_id: str
    policy: str
    upstream: str
    mail_from: str
    rcpt_to: list[str]
    """The recipients still to be delivered (settled ones are left out)."""
    size: int
    received_at: datetime
    age_s: float
    state: str
    held_by: str = ""
    """``hold``, ``suspended`` or ``moving`` when the state is ``held``."""
    held_reason: str = ""
    attempts: int = 0
    last_code: int | None = None
    last_reply: str = ""
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    """When a dispatcher tries it next: the deferral's time; for a suspension with an end,
    that end; None when it is due now (waiting) or held until released."""
    replay_of: int | None = None
    moved_from: int | None = None
    body_object: str | None = None
    """Name of the body in the BODIES object store; None when the body is inline."""
    record_key: str = ""
    """Its key in the ATTEMPTS bucket (`mail.attempts_key`)."""


def queued_item(seq: int, env: mail.Envelope, record: mail.AttemptRecord | None,
                steer: Steering, now: datetime) -> QueuedItem:
    """The row of one MAIL message."""
    record = record or mail.AttemptRecord()
    done = set(record.done)
    held_by, reason, next_at = "", "", record.next_attempt_at
    suspension = steer.suspended.get(env.upstream)
    if seq in steer.moving:
        held_by, reason = MOVING, f"being moved to {steer.moving[seq].to_upstream}"
    elif env.id in steer.held:
        held_by, reason, next_at = HOLD, steer.held[env.id].reason, None
    elif suspension is not None and active(suspension, now):
        held_by, reason = SUSPENDED, suspension.reason
        until = suspension.until
        next_at = None if until is None else max(next_at or until, until)
    state = HELD if held_by else DEFERRED if record.attempts > 0 else WAITING
    received = env.received_at
    return QueuedItem(
        id=seq, seq=seq, mail_id=env.id, policy=env.policy, upstream=env.upstream,
        mail_from=env.mail_from, rcpt_to=[r for r in env.rcpt_to if r not in done],
        size=env.size, received_at=received, age_s=max(0.0, (now - received).total_seconds()),
        state=state, held_by=held_by, held_reason=reason, attempts=record.attempts,
        last_code=record.last_code, last_reply=record.last_reply,
        last_attempt_at=record.last_attempt_at,
        next_attempt_at=None if state == WAITING else next_at,
        replay_of=env.replay_of, moved_from=env.moved_from,
        body_object=env.body_ref.name if env.body_ref else None,
        record_key=mail.attempts_key(env),
    )


class Filter(msgspec.Struct, frozen=True, kw_only=True):
    """Which rows ``--upstream``/``--policy``/``--older-than``/``--state`` keep."""

    upstream: str | None = None
    policy: str | None = None
    received_before: datetime | None = None
    state: str | None = None

    @property
    def narrows(self) -> bool:
        """True when any filter is given (a bulk action without IDs needs one, or --all)."""
        return any(v is not None for v in (self.upstream, self.policy,
                                           self.received_before, self.state))


def keep(item: QueuedItem, where: Filter) -> bool:
    if where.upstream is not None and item.upstream != where.upstream:
        return False
    if where.policy is not None and item.policy != where.policy:
        return False
    if where.state is not None and item.state != where.state:
        return False
    return where.received_before is None or item.received_at < where.received_before


def select(items: Iterable[QueuedItem], where: Filter) -> list[QueuedItem]:
    return [item for item in items if keep(item, where)]


def oldest(items: Iterable[QueuedItem]) -> dict[str, datetime]:
    """The oldest mail's receipt time per upstream."""
    found: dict[str, datetime] = {}
    for item in items:
        if item.upstream not in found or item.received_at < found[item.upstream]:
            found[item.upstream] = item.received_at
    return found


# --- the actions' outcomes ------------------------------------------------------------------


class Action(msgspec.Struct, frozen=True, kw_only=True):
    """What one action did to one queued mail: ``held``, ``released``, ``moved``,
    ``already-moved`` (an earlier run of this move stored the copy), ``purged``,
    ``gone`` (no longer queued: delivered or removed meanwhile), ``not-held``,
    ``not-deferred`` (retry: the mail is due already, or held), ``planned`` (dry run)."""

    seq: int
    mail_id: str
    upstream: str
    policy: str
    outcome: str
    to_upstream: str | None = None
    to_seq: int | None = None


class SuspensionItem(msgspec.Struct, frozen=True, kw_only=True):
    """One suspended upstream, as ``queue suspend`` and ``status`` report it."""

    upstream: str
    since: datetime
    until: datetime | None
    reason: str
    active: bool


def suspension_items(steer: Steering, now: datetime) -> list[SuspensionItem]:
    return [SuspensionItem(upstream=s.upstream, since=s.since, until=s.until,
                           reason=s.reason, active=active(s, now))
            for _, s in sorted(steer.suspended.items())]


def move_msg_id(mail_id: str, seq: int, to_upstream: str) -> str:
    """``Nats-Msg-Id`` of the copy a move stores: the mail, the message moved (its MAIL
    sequence) and where to. Running a move again within the MAIL stream's duplicate window
    stores no second copy."""
    return f"{mail_id}.move.{seq}.{names.key_ident(to_upstream)}"


def moved_envelope(env: mail.Envelope, seq: int, to_upstream: str) -> mail.Envelope:
    """The copy: the same mail (id, recipients, body, attempt record) for ``to_upstream``,
    marked as moved from ``seq`` so the dispatcher reads its attempt record."""
    return msgspec.structs.replace(env, upstream=to_upstream, moved_from=seq)


def orphaned_records(purged: Iterable[QueuedItem], left: Iterable[mail.Envelope]) -> set[str]:
    """Attempt record keys of the purged mails that no message still queued shares: what
    a purge may delete."""
    still = {mail.attempts_key(env) for env in left}
    return {item.record_key for item in purged if item.record_key not in still}
