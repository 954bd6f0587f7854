"""The records a dispatcher remembers of the mail it settled (`recording.Backlog.settled`):
what it gives back, how many it keeps, and that keeping them is no work for Python's
garbage collector (ten thousand long-lived records as objects were a sixth of the
dispatcher's CPU, every full collection walking them)."""

from __future__ import annotations

import gc
from datetime import UTC, datetime

from dispatcher import recording
from schemas import mail


def _record(i: int) -> mail.AttemptRecord:
    at = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    return mail.AttemptRecord(attempts=1, policy="apps/web", upstream="mail/relay",
                              first_attempt_at=at, last_attempt_at=at, last_code=250,
                              last_reply="2.0.0 ok", done=[f"r{i}@example.org"], dead=[])


def test_a_settled_record_comes_back_for_its_sequence_and_mail_only() -> None:
    backlog = recording.Backlog()
    backlog.remember_settled(7, "mail-a", _record(7))
    assert backlog.settled_record(7, "mail-a") == _record(7)
    assert backlog.settled_record(7, "mail-b") is None  # another mail at that sequence
    assert backlog.settled_record(8, "mail-a") is None


def test_only_the_newest_are_kept() -> None:
    backlog = recording.Backlog()
    for seq in range(1, recording.UNCONFIRMED_KEPT + 6):
        backlog.remember_settled(seq, f"mail-{seq}", _record(seq))
    assert len(backlog.settled) == recording.UNCONFIRMED_KEPT
    assert backlog.settled_record(5, "mail-5") is None
    assert backlog.settled_record(6, "mail-6") == _record(6)


def test_remembered_records_are_nothing_the_collector_walks() -> None:
    backlog = recording.Backlog()
    backlog.remember_settled(1, "mail-1", _record(1))  # the dict's own first growth
    gc.collect()
    before = len(gc.get_objects())
    for seq in range(2, 2002):
        backlog.remember_settled(seq, f"mail-{seq}", _record(seq))
    gc.collect()  # untracks what holds nothing it could be a cycle through
    grown = len(gc.get_objects()) - before
    assert grown < 50, f"{grown} more objects for the collector to walk for 2,000 records"
    assert not any(gc.is_tracked(entry) for entry in backlog.settled.values())
