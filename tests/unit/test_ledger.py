"""podpost's own attempt bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatcher.rules import classify, ledger
from dispatcher.rules.outcome import Outcome, RcptResult
from schemas import mail, snapshot

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
POLICY = snapshot.RetryPolicy(min_delay_s=300.0, max_delay_s=4020.0, max_age_s=86400.0)


def _envelope(*rcpts: str) -> mail.Envelope:
    return mail.Envelope(id="m1", policy="apps/p", upstream="mail/up", mail_from="s@x",
                         rcpt_to=list(rcpts), received_at=NOW, size=10, body=b"x")


def _decide(attempt: int, *results: tuple[str, int]) -> classify.Decision:
    outcome = Outcome(rcpts=[RcptResult(rcpt=r, code=c, reply=f"{c} reply")
                             for r, c in results])
    return classify.classify(outcome, [r for r, _ in results], attempt=attempt,
                             age_s=600.0, policy=POLICY)


def test_pending_skips_settled_recipients_in_order() -> None:
    """A redelivered mail is sent only to the recipients not yet settled."""
    env = _envelope("a@x", "b@x", "c@x")
    record = mail.AttemptRecord(done=["b@x"])
    assert ledger.pending(env, record) == ["a@x", "c@x"]


def test_an_attempt_counts_and_remembers_settled_recipients() -> None:
    """After a mixed attempt the record has the new count, the settled recipients (the
    dead ones also listed as dead), the next attempt and the deferral's reply."""
    decision = _decide(1, ("ok@x", 250), ("gone@x", 550), ("later@x", 451))
    record = ledger.after(mail.AttemptRecord(), decision, now=NOW, policy="apps/p",
                          upstream="mail/up")
    assert record == mail.AttemptRecord(
        attempts=1, policy="apps/p", upstream="mail/up", first_attempt_at=NOW,
        last_attempt_at=NOW, next_attempt_at=NOW + timedelta(seconds=600.0),
        last_code=451, last_reply="451 reply", done=["ok@x", "gone@x"], dead=["gone@x"],
    )


def test_a_later_attempt_keeps_the_first_attempt_time() -> None:
    """The second attempt moves the last attempt time and the count, not the first."""
    first = NOW - timedelta(minutes=10)
    before = mail.AttemptRecord(attempts=1, first_attempt_at=first, last_attempt_at=first,
                                done=["ok@x"])
    record = ledger.after(before, _decide(2, ("later@x", 250)), now=NOW, policy="apps/p",
                          upstream="mail/up")
    assert (record.attempts, record.first_attempt_at, record.last_attempt_at) == (
        2, first, NOW)
    assert record.done == ["ok@x", "later@x"]
    assert record.next_attempt_at is None
    assert record.dead == []


def test_a_hold_changes_no_count() -> None:
    """Waiting for a snapshot or an upstream is not an attempt."""
    before = mail.AttemptRecord(attempts=2, last_attempt_at=NOW - timedelta(minutes=5),
                                last_code=451)
    hold = classify.hold(["a@x"], age_s=60.0, policy=POLICY, delay_s=5.0, reason="wait")
    record = ledger.after(before, hold, now=NOW, policy="apps/p", upstream="mail/up")
    assert record.attempts == 2
    assert record.last_attempt_at == before.last_attempt_at
    assert record.last_code == 451
    assert record.next_attempt_at == NOW + timedelta(seconds=5.0)


def test_dead_letter_ids_depend_on_recipients_not_their_order() -> None:
    """The dedupe id is stable for the same recipients and differs between groups and
    between a mail and its replay."""
    one = ledger.dead_letter_id("m1", ["a@x", "b@x"])
    assert one == ledger.dead_letter_id("m1", ["b@x", "a@x"])
    assert one != ledger.dead_letter_id("m1", ["a@x"])
    assert one != ledger.dead_letter_id("m1.r7", ["a@x", "b@x"])
