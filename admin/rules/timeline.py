"""The order of a mail's events, for ``podpost trace``.

Events reach the EVENTS stream in the order their core publishes arrive, not the order
things happened: the ingress and a dispatcher publish over different connections, so a
fast delivery's ``delivered`` can be stored before the ingress's ``accepted``. Each event
carries its time (``at``), so a history is shown by time; events of one instant are put
in the order of a mail's life, and events of one instant and kind keep the stream's order.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from schemas import events

LIFE: dict[str, int] = {
    "rejected": 0, "accepted": 1, "attempted": 2, "deferred": 3,
    "delivered": 4, "dead": 4, "replayed": 5, "purged": 6,
}
"""Rank of each kind in a mail's life: a refusal comes before the transaction that was
accepted, an attempt before its outcome, a dead letter before its replay or purge.
Delivered and dead share a rank: a mail split by recipients can have both at once."""


def sort_key(event: events.AnyEvent) -> tuple[datetime, int]:
    return event.at, LIFE.get(events.kind_of(event), len(LIFE))


def ordered(history: Iterable[events.AnyEvent]) -> list[events.AnyEvent]:
    """The events by time, ties by `LIFE`, then in the order given (a stable sort)."""
    return sorted(history, key=sort_key)
