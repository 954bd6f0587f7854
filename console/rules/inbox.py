"""The console's lists as data: a caught mail's row (with the namespace, policy and pod it
came from), a dead letter's row, the search that narrows them, and the inboxes (one per
namespace) with their counts.

podpost knows each caught mail's policy (``<namespace>/<name>``) and the pod the ingress
admitted it for (the route's source, ``pod:<ns>/<name>`` or ``static:<ns>/<name>``): the
namespace of the policy is the inbox, so teams sharing a relay each see their own.
Pure: no I/O, no clock (``now`` is not needed: times are compared, never measured).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime

import msgspec

from schemas import mail, names

_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""A Kubernetes namespace: a DNS label. Anything else never reaches a subject filter."""


class InvalidSearch(ValueError):
    """A search parameter that cannot be used, said in one line."""


class CaughtRow(msgspec.Struct, frozen=True, kw_only=True):
    """One caught mail in an inbox; ``seq`` (its CAUGHT sequence) names it in the API."""

    seq: int
    mail_id: str
    namespace: str
    policy: str
    pod: str
    """The pod (or static source) the ingress admitted the mail for: ``<ns>/<name>``."""
    client_ip: str
    mail_from: str
    rcpt_to: list[str]
    subject: str
    caught_at: datetime
    received_at: datetime
    size: int


def pod_of(source: str) -> str:
    """``pod:apps/web-1`` -> ``apps/web-1``; a source of another form as it is."""
    kind, sep, key = source.partition(":")
    return key if sep and kind in ("pod", "static") else source


def namespace_of(policy: str) -> str:
    try:
        return names.split_key(policy)[0]
    except names.InvalidKey:
        return ""


def caught_row(seq: int, caught: mail.Caught, subject: str) -> CaughtRow:
    env = caught.envelope
    return CaughtRow(
        seq=seq, mail_id=env.id, namespace=namespace_of(env.policy), policy=env.policy,
        pod=pod_of(env.source), client_ip=env.client_ip, mail_from=env.mail_from,
        rcpt_to=list(env.rcpt_to), subject=subject, caught_at=caught.caught_at,
        received_at=env.received_at, size=env.size,
    )


class DeadRow(msgspec.Struct, frozen=True, kw_only=True):
    """One dead letter; ``seq`` (its DEAD sequence) names it in the API."""

    seq: int
    mail_id: str
    namespace: str
    policy: str
    upstream: str
    fate: str
    reason: str
    code: int | None
    reply: str
    attempts: int
    dead_at: datetime
    mail_from: str
    rcpt_to: list[str]
    size: int
    replay_of: int | None


def dead_row(seq: int, letter: mail.DeadLetter) -> DeadRow:
    env = letter.envelope
    return DeadRow(
        seq=seq, mail_id=env.id, namespace=namespace_of(env.policy), policy=env.policy,
        upstream=env.upstream, fate=letter.fate, reason=letter.reason, code=letter.code,
        reply=letter.reply, attempts=letter.attempts, dead_at=letter.dead_at,
        mail_from=env.mail_from, rcpt_to=list(env.rcpt_to), size=env.size,
        replay_of=env.replay_of,
    )


class Search(msgspec.Struct, frozen=True, kw_only=True):
    """What an inbox view or an API client asks for; every given field must match.
    Text fields match case-insensitively as substrings, as a search box does."""

    namespace: str | None = None
    policy: str | None = None
    pod: str | None = None
    sender: str | None = None
    recipient: str | None = None
    subject: str | None = None
    mail_id: str | None = None
    since: datetime | None = None
    """Caught at or after this time."""
    until: datetime | None = None
    """Caught before this time."""


def checked_namespace(namespace: str | None) -> str | None:
    """A namespace as a subject token: a DNS label, or a one-line error."""
    if namespace is None or namespace == "":
        return None
    if not _NAMESPACE_RE.match(namespace):
        raise InvalidSearch(f"namespace {namespace!r} is not a Kubernetes namespace name")
    return namespace


def _has(haystack: str, needle: str | None) -> bool:
    return needle is None or needle.casefold() in haystack.casefold()


def keep(row: CaughtRow, search: Search) -> bool:
    if search.namespace is not None and row.namespace != search.namespace:
        return False
    if search.policy is not None and row.policy != search.policy:
        return False
    if search.mail_id is not None and row.mail_id != search.mail_id:
        return False
    if not (_has(row.pod, search.pod) and _has(row.mail_from, search.sender)
            and _has(row.subject, search.subject)):
        return False
    if search.recipient is not None and not any(_has(r, search.recipient) for r in row.rcpt_to):
        return False
    if search.since is not None and row.caught_at < search.since:
        return False
    return search.until is None or row.caught_at < search.until


def select(rows: Iterable[CaughtRow], search: Search, limit: int) -> list[CaughtRow]:
    """The rows the search keeps, newest first, at most ``limit``."""
    kept = [row for row in rows if keep(row, search)]
    kept.sort(key=lambda row: row.seq, reverse=True)
    return kept[:limit]


class Inbox(msgspec.Struct, frozen=True, kw_only=True):
    namespace: str
    count: int
    policies: list[str]


def inboxes(rows: Sequence[CaughtRow]) -> list[Inbox]:
    """One inbox per namespace that has caught mail, by name."""
    by_ns: dict[str, list[CaughtRow]] = {}
    for row in rows:
        by_ns.setdefault(row.namespace, []).append(row)
    return [Inbox(namespace=ns, count=len(found),
                  policies=sorted({row.policy for row in found}))
            for ns, found in sorted(by_ns.items())]


class QueueRow(msgspec.Struct, frozen=True, kw_only=True):
    upstream: str
    policy: str
    queued: int


def queue_rows(bus_names: names.Bus, counts: dict[str, int]) -> list[QueueRow]:
    """MAIL stream counts per subject as (upstream, policy) rows; foreign subjects skipped."""
    rows: list[QueueRow] = []
    for subject, count in counts.items():
        try:
            upstream, policy = bus_names.parse_mail_subject(subject)
        except names.InvalidKey:
            continue
        rows.append(QueueRow(upstream=upstream, policy=policy, queued=count))
    return sorted(rows, key=lambda row: (row.upstream, row.policy))
