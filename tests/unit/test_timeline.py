"""``podpost trace`` orders a mail's events by time, ties by the order of a mail's life."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from admin.rules import timeline
from schemas import events

T0 = datetime(2025, 12, 1, 12, 0, tzinfo=UTC)
ID = "m1"


def _life(at: datetime) -> list[events.AnyEvent]:
    """One event of each kind a mail can have, all at ``at``, in the order of its life."""
    return [
        events.Rejected(mail_id=ID, at=at, code=451),
        events.Accepted(mail_id=ID, at=at),
        events.Attempted(mail_id=ID, at=at, attempt=1),
        events.Deferred(mail_id=ID, at=at, retry_in_s=300.0),
        events.Delivered(mail_id=ID, at=at, rcpt_to=["a@example.org"]),
        events.Dead(mail_id=ID, at=at, fate="permanent", rcpt_to=["b@example.org"]),
        events.Replayed(mail_id=ID, at=at, dead_seq=1),
        events.Purged(mail_id=ID, at=at, dead_seq=2),
    ]


def test_events_are_ordered_by_time_not_by_arrival() -> None:
    """A delivered event stored before the accepted one it follows is shown after it."""
    accepted = events.Accepted(mail_id=ID, at=T0)
    attempted = events.Attempted(mail_id=ID, at=T0 + timedelta(milliseconds=3), attempt=1)
    delivered = events.Delivered(mail_id=ID, at=T0 + timedelta(milliseconds=9))
    assert timeline.ordered([delivered, attempted, accepted]) == [
        accepted, attempted, delivered]


def test_events_of_one_instant_follow_a_mails_life() -> None:
    """At the same time: rejected, accepted, attempted, deferred, delivered/dead, replayed,
    purged, whatever order they arrived in."""
    life = _life(T0)
    for seed in range(20):
        shuffled = list(life)
        random.Random(seed).shuffle(shuffled)
        kinds = [events.kind_of(e) for e in timeline.ordered(shuffled)]
        assert kinds[:4] == ["rejected", "accepted", "attempted", "deferred"]
        assert set(kinds[4:6]) == {"delivered", "dead"}
        assert kinds[6:] == ["replayed", "purged"]


def test_time_wins_over_the_life_order() -> None:
    """An attempt one millisecond before an (odd, but stored) accepted stays first: the
    life order only breaks ties."""
    attempted = events.Attempted(mail_id=ID, at=T0, attempt=1)
    accepted = events.Accepted(mail_id=ID, at=T0 + timedelta(milliseconds=1))
    assert timeline.ordered([accepted, attempted]) == [attempted, accepted]


def test_events_of_one_instant_and_kind_keep_their_stream_order() -> None:
    """Two deliveries of one instant (a split recipient list) stay as the stream has them."""
    first = events.Delivered(mail_id=ID, at=T0, rcpt_to=["a@example.org"])
    second = events.Delivered(mail_id=ID, at=T0, rcpt_to=["b@example.org"])
    accepted = events.Accepted(mail_id=ID, at=T0)
    assert timeline.ordered([first, second, accepted]) == [accepted, first, second]
    assert timeline.ordered([second, first, accepted]) == [accepted, second, first]
