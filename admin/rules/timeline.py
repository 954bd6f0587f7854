"""The order of a mail's events, for ``podpost trace``.

Events reach the EVENTS stream in the order their core publishes arrive, not the order
things happened: the ingress and a dispatcher publish over different connections, so a
fast delivery's ``delivered`` can be stored before the ingress's ``accepted``. Each event
carries its time (``at``), so a history is shown by time; events of one instant are put
in the order of a mail's life, and events of one instant and kind keep the stream's order.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from schemas import events

LIFE: dict[str, int] = {
    "rejected": 0, "accepted": 1, "suspended": 2, "resumed": 2, "held": 2, "released": 2,
    "moved": 2, "attempted": 3, "deferred": 4, "delivered": 5, "dead": 5, "removed": 5,
    "replayed": 6, "purged": 7,
}
"""Rank of each kind in a mail's life: a refusal comes before the transaction that was
accepted, an attempt before its outcome, a dead letter before its replay or purge.
Delivered and dead share a rank: a mail split by recipients can have both at once."""


def sort_key(event: events.AnyEvent) -> tuple[datetime, int]:
    return event.at, LIFE.get(events.kind_of(event), len(LIFE))


def ordered(history: Iterable[events.AnyEvent]) -> list[events.AnyEvent]:
    """The events by time, ties by `LIFE`, then in the order given (a stable sort)."""
    return sorted(history, key=sort_key)


def with_upstreams(history: Sequence[events.AnyEvent],
                   upstream_events: Iterable[events.AnyEvent]) -> list[events.AnyEvent]:
    """A mail's ``history`` (ordered) with the events of its upstreams (``suspended``,
    ``resumed``: they name no mail) that fall between its first and last event, and the
    last one before its first event when that was a suspension still in force."""
    if not history:
        return []
    ups = {event.upstream for event in history} | {
        event.to_upstream for event in history if isinstance(event, events.Moved)}
    first, last = history[0].at, history[-1].at
    mine = ordered(e for e in upstream_events if e.upstream in ups)
    during = [e for e in mine if first <= e.at <= last]
    before: dict[str, events.AnyEvent] = {}
    for event in mine:
        if event.at < first:
            before[event.upstream] = event
    standing = [e for e in before.values() if isinstance(e, events.Suspended)]
    return ordered([*history, *standing, *during])
