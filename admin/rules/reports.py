"""What the operator commands report, as data: rows of ``dlq``/``caught`` lists, how an ID
names a dead letter, which dead letters a filter selects, and the ``status`` counts.

The commands print these Structs as tables (`podpost.tables`) or encode the very same
Structs with ``--json``, so people and scripts see one truth. Pure: no I/O, no clock
(``now`` is passed in).
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TypeVar

import msgspec

from schemas import mail, names, snapshot


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


class CaughtItem(msgspec.Struct, frozen=True, kw_only=True):
    """One mail kept by the catcher; ``id`` is its CAUGHT stream sequence."""

    id: int
    seq: int
    mail_id: str
    policy: str
    caught_at: datetime
    mail_from: str
    rcpt_to: list[str]
    subject: str
    size: int


def caught_item(seq: int, caught: mail.Caught, subject: str) -> CaughtItem:
    env = caught.envelope
    return CaughtItem(
        id=seq, seq=seq, mail_id=env.id, policy=env.policy, caught_at=caught.caught_at,
        mail_from=env.mail_from, rcpt_to=list(env.rcpt_to), subject=subject, size=env.size,
    )


T = TypeVar("T", DeadItem, CaughtItem)


# --- IDs ---------------------------------------------------------------------------------


class Ids(msgspec.Struct, frozen=True, kw_only=True):
    """IDs as the operator typed them: stream sequences and mail ids."""

    seqs: tuple[int, ...] = ()
    mail_ids: tuple[str, ...] = ()


MAX_SEQ_DIGITS = 20
"""A stream sequence is a uint64: at most 20 digits. Longer digit strings are mail ids."""


def parse_ids(texts: Iterable[str]) -> Ids:
    """Digits are a stream sequence (``42``); anything else is a mail id. Ingress mail ids
    are 26 base32 characters and never all digits; a longer all-digit id (a hex id that
    happens to hold no letter) cannot be a sequence, so it is a mail id too."""
    seqs: list[int] = []
    mail_ids: list[str] = []
    for raw in texts:
        text = raw.strip()
        if not text:
            raise ValueError("empty id")
        if text.isdigit() and text.isascii() and len(text) <= MAX_SEQ_DIGITS:
            if int(text) == 0:
                raise ValueError("id 0: stream sequences start at 1")
            seqs.append(int(text))
        elif text.isascii() and text.isprintable() and " " not in text:
            mail_ids.append(text)
        else:
            raise ValueError(f"not an id: {raw!r} (a stream sequence or a mail id)")
    return Ids(seqs=tuple(dict.fromkeys(seqs)), mail_ids=tuple(dict.fromkeys(mail_ids)))


def pick(items: Sequence[T], ids: Ids) -> tuple[list[T], list[str]]:
    """The items named by ``ids`` (every match of a mail id), in stream order, and the ids
    that named nothing."""
    by_seq = {item.seq: item for item in items}
    chosen: dict[int, T] = {}
    unknown: list[str] = []
    for seq in ids.seqs:
        if seq in by_seq:
            chosen[seq] = by_seq[seq]
        else:
            unknown.append(str(seq))
    for mail_id in ids.mail_ids:
        matches = [item for item in items if item.mail_id == mail_id]
        if not matches:
            unknown.append(mail_id)
        chosen.update((item.seq, item) for item in matches)
    return [chosen[seq] for seq in sorted(chosen)], unknown


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


# --- replay and purge outcomes -----------------------------------------------------------


class Replay(msgspec.Struct, frozen=True, kw_only=True):
    """One dead letter sent back to the MAIL stream (or, with ``--dry-run``, that would be)."""

    seq: int
    mail_id: str
    policy: str
    from_upstream: str
    to_upstream: str
    subject: str
    msg_id: str
    rcpt_to: list[str]
    outcome: str = "planned"
    """``planned`` (dry run), ``queued``, ``already-queued`` (the MAIL stream's duplicate
    window dropped it: an earlier replay of this dead letter was stored) or
    ``body-missing`` (its body object is gone: nothing was queued, the dead letter stays)."""
    mail_seq: int | None = None


def replay_msg_id(mail_id: str, seq: int) -> str:
    """``Nats-Msg-Id`` of a replay: replaying one dead letter twice queues it once."""
    return f"{mail_id}.replay.{seq}"


def replay_envelope(item_envelope: mail.Envelope, seq: int, to_upstream: str | None
                    ) -> mail.Envelope:
    """The envelope to queue again: marked as a replay of ``seq``, maybe re-routed."""
    upstream = to_upstream or item_envelope.upstream
    return msgspec.structs.replace(item_envelope, replay_of=seq, upstream=upstream)


class Purge(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    mail_id: str
    outcome: str = "planned"
    """``planned`` (dry run) or ``purged``."""
    body: str = "none"
    """What happened to its body object: ``none`` (inline), ``planned`` (dry run),
    ``deleted``, ``kept``
    (another dead letter or a queued mail still needs it), ``unchecked`` (the MAIL stream
    was too large to check, so it is kept; the bucket's TTL collects it) or ``missing``."""


def orphaned(candidates: Iterable[str], still_used: Iterable[str]) -> list[str]:
    """Body objects nothing refers to any more, in a stable order."""
    used = set(still_used)
    return sorted({name for name in candidates if name not in used})


# --- status ------------------------------------------------------------------------------


class RateUsage(msgspec.Struct, frozen=True, kw_only=True):
    """A policy's rate limit; ``used`` (messages sent in the current window, not the
    tokens dispatchers hold for fetches still waiting) is filled in by whoever can read the
    limiter's counters."""

    maximum: int
    period_s: float
    used: int | None = None


class PolicyStatus(msgspec.Struct, frozen=True, kw_only=True):
    policy: str
    queued: int = 0
    """Messages in the MAIL stream for this (upstream, policy), in flight and deferred
    ones included (a work queue keeps a message until it is acked)."""
    in_flight: int | None = None
    """Delivered to a dispatcher and not yet acked (the consumer's ack-pending count);
    None when no consumer exists for the pair."""
    deferred: int = 0
    """Attempt records whose next attempt is in the future."""
    dead: int | None = None
    """Dead letters are counted per upstream (their subject); None here."""
    ratelimit: RateUsage | None = None


class UpstreamStatus(msgspec.Struct, frozen=True, kw_only=True):
    upstream: str
    queued: int = 0
    in_flight: int = 0
    deferred: int = 0
    dead: int = 0
    known: bool = True
    """Whether the current snapshot names this upstream (the catcher always counts)."""
    policies: list[PolicyStatus] = []


class SnapshotStatus(msgspec.Struct, frozen=True, kw_only=True):
    revision: int
    generated_at: datetime
    age_s: float
    source: str = ""


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    snapshot: SnapshotStatus | None
    upstreams: list[UpstreamStatus]
    unreadable_attempts: int = 0


class ConsumerLoad(msgspec.Struct, frozen=True, kw_only=True):
    """What status needs of one MAIL consumer."""

    filter_subject: str
    ack_pending: int


def _pair_of(bus: names.Bus, subject: str) -> tuple[str, str | None] | None:
    """(upstream, policy) of a MAIL subject, (upstream, None) of a per-upstream wildcard."""
    try:
        return bus.parse_mail_subject(subject)
    except names.InvalidKey:
        pass
    parts = subject.split(".")
    if len(parts) == 6 and parts[:3] == [bus.prefix, "mail", "out"] and parts[5] == ">":
        return names.token_key(".".join(parts[3:5])), None
    return None


def dead_upstream(bus: names.Bus, subject: str) -> str | None:
    """``<prefix>.mail.dead.<ns>.<name>`` -> ``ns/name``."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:3] != [bus.prefix, "mail", "dead"]:
        return None
    return names.token_key(".".join(parts[3:5]))


def status_report(
    bus: names.Bus,
    *,
    now: datetime,
    queued: Mapping[str, int],
    consumers: Sequence[ConsumerLoad],
    attempts: Sequence[mail.AttemptRecord],
    dead: Mapping[str, int],
    snap: snapshot.PolicySnapshot | None,
    revision: int,
    rate_used: Mapping[str, int] | None = None,
) -> StatusReport:
    """Fold the raw counts into one row per upstream with one row per policy underneath.
    ``rate_used``: messages sent per policy in its current rate-limit window (a policy
    absent has used none); None when the counters could not be read.

    Upstreams and pairs come from the snapshot and from everything that holds data, so
    mail for a policy that moved or vanished is still shown."""
    pairs: dict[tuple[str, str], dict[str, int | None]] = {}
    upstream_in_flight: dict[str, int] = {}
    upstream_dead: dict[str, int] = {}

    def row(upstream: str, policy: str) -> dict[str, int | None]:
        return pairs.setdefault((upstream, policy),
                                {"queued": 0, "in_flight": None, "deferred": 0})

    if snap is not None:
        for view in snap.policies.values():
            row(view.upstream, view.key)
    for subject, count in queued.items():
        pair = _pair_of(bus, subject)
        if pair is not None and pair[1] is not None:
            row(pair[0], pair[1])["queued"] = count
    for consumer in consumers:
        pair = _pair_of(bus, consumer.filter_subject)
        if pair is None:
            continue
        upstream_in_flight[pair[0]] = upstream_in_flight.get(pair[0], 0) + consumer.ack_pending
        if pair[1] is not None:
            cells = row(pair[0], pair[1])
            cells["in_flight"] = (cells["in_flight"] or 0) + consumer.ack_pending
    for record in attempts:
        due = record.next_attempt_at
        if due is None or due <= now or not record.upstream or not record.policy:
            continue
        cells = row(record.upstream, record.policy)
        cells["deferred"] = (cells["deferred"] or 0) + 1
    for subject, count in dead.items():
        upstream = dead_upstream(bus, subject)
        if upstream is not None:
            upstream_dead[upstream] = upstream_dead.get(upstream, 0) + count

    known = set(snap.upstreams) if snap is not None else set()
    upstream_keys = {up for up, _ in pairs} | set(upstream_dead) | set(upstream_in_flight)
    upstream_keys |= known
    rows: list[UpstreamStatus] = []
    for upstream in sorted(upstream_keys):
        policies = [
            PolicyStatus(
                policy=policy, queued=cells["queued"] or 0, in_flight=cells["in_flight"],
                deferred=cells["deferred"] or 0, ratelimit=_rate(snap, policy, rate_used),
            )
            for (up, policy), cells in sorted(pairs.items()) if up == upstream
        ]
        rows.append(UpstreamStatus(
            upstream=upstream,
            queued=sum(p.queued for p in policies),
            in_flight=upstream_in_flight.get(upstream, 0),
            deferred=sum(p.deferred for p in policies),
            dead=upstream_dead.get(upstream, 0),
            known=snap is None or upstream in known or upstream == names.CATCHER,
            policies=policies,
        ))
    return StatusReport(
        at=now,
        snapshot=None if snap is None else SnapshotStatus(
            revision=revision, generated_at=snap.generated_at,
            age_s=max(0.0, (now - snap.generated_at).total_seconds()), source=snap.source),
        upstreams=rows,
    )


def _rate(snap: snapshot.PolicySnapshot | None, policy: str,
          rate_used: Mapping[str, int] | None) -> RateUsage | None:
    view = snap.policies.get(policy) if snap is not None else None
    if view is None or view.ratelimit is None:
        return None
    return RateUsage(maximum=view.ratelimit.maximum, period_s=view.ratelimit.period_s,
                     used=None if rate_used is None else rate_used.get(policy, 0))


# --- messages ----------------------------------------------------------------------------


class MessageView(msgspec.Struct, frozen=True, kw_only=True):
    """A stored message as ``caught show`` prints it: headers and a readable text."""

    headers: list[tuple[str, str]]
    subject: str
    text: str
    """The text/plain part; else the text/html source; else a note saying what there is."""


def read_message(raw: bytes) -> MessageView:
    """Parse a message leniently: a catcher shows whatever an application sent."""
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    headers = [(name, str(value)) for name, value in message.items()]
    subject = str(message.get("Subject", ""))
    assert isinstance(message, email.message.EmailMessage)
    part = message.get_body(preferencelist=("plain", "html"))
    text: str
    if part is None:
        text = f"(no text part; {len(raw)} bytes, {message.get_content_type()})"
    else:
        try:
            content = part.get_content()
        except (LookupError, ValueError) as exc:  # unknown charset, broken encoding
            content = f"(the text part cannot be decoded: {exc})"
        text = content if isinstance(content, str) else f"({len(content)} bytes of binary)"
    text = text.replace("\r\n", "\n")  # SMTP's line ends; a terminal wants "\n"
    return MessageView(headers=headers, subject=subject, text=text)


def subject_of(raw: bytes) -> str:
    """The Subject header, read from the headers only."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        head + b"\r\n\r\n", headersonly=True)
    return str(message.get("Subject", ""))
