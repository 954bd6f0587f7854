"""The pure parts of the live queue: a queued mail's state and row, the CONTROL bucket as
the dispatcher reads it (what is blocked, for how long), a hold's decision, the move's
dedupe id, the trace with upstream events and the status with suspensions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from admin.rules import queuedmail, statusreport, timeline
from dispatcher import control as dispatcher_control
from podpost import tables
from schemas import control, events, mail, names

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ENV = mail.Envelope(id="m1", policy="apps/web", upstream="mail/up", mail_from="a@x.org",
                    rcpt_to=["b@x.org", "c@x.org"], received_at=NOW - timedelta(hours=2),
                    size=10, body=b"x")
SUSPENDED = control.Suspension(upstream="mail/up", since=NOW, reason="blocked")
DEFERRED = mail.AttemptRecord(attempts=2, next_attempt_at=NOW + timedelta(minutes=5),
                              last_code=451, last_reply="later", done=["b@x.org"])


def _entries(*entries: tuple[str, object]) -> dict[str, bytes]:
    return {key: control.encoder.encode(value) for key, value in entries}


@pytest.mark.parametrize(("record", "steer", "state", "held_by", "next_at"), [
    (None, queuedmail.Steering(), "waiting", "", None),
    (DEFERRED, queuedmail.Steering(), "deferred", "", DEFERRED.next_attempt_at),
    (DEFERRED, queuedmail.Steering(suspended={"mail/up": SUSPENDED}), "held", "suspended",
     None),
    (None, queuedmail.Steering(suspended={"mail/up": control.Suspension(
        upstream="mail/up", since=NOW, until=NOW - timedelta(seconds=1))}), "waiting", "",
     None),
    (None, queuedmail.Steering(suspended={"mail/up": control.Suspension(
        upstream="mail/up", since=NOW, until=NOW + timedelta(hours=1))}), "held",
     "suspended", NOW + timedelta(hours=1)),
    (DEFERRED, queuedmail.Steering(held={"m1": control.Hold(mail_id="m1", since=NOW)}),
     "held", "hold", None),
    (None, queuedmail.Steering(moving={7: control.Moving(
        seq=7, mail_id="m1", to_upstream="mail/b", msg_id="x", since=NOW)},
        suspended={"mail/up": SUSPENDED}), "held", "moving", None),
])
def test_a_queued_mails_state(record: mail.AttemptRecord | None,
                              steer: queuedmail.Steering, state: str, held_by: str,
                              next_at: datetime | None) -> None:
    """Held (a move under way before a hold before a suspension in force) beats deferred
    (tried before) beats waiting; the next attempt is the deferral's, or the end of a
    suspension, or none while held until released."""
    item = queuedmail.queued_item(7, ENV, record, steer, NOW)
    assert (item.state, item.held_by, item.next_attempt_at) == (state, held_by, next_at)
    assert item.age_s == 7200.0


def test_a_row_shows_the_recipients_left_and_the_last_reply() -> None:
    """Settled recipients are left out; attempts and the last reply come from the record."""
    item = queuedmail.queued_item(3, ENV, DEFERRED, queuedmail.Steering(), NOW)
    assert (item.rcpt_to, item.attempts, item.last_code, item.last_reply) == (
        ["c@x.org"], 2, 451, "later")
    console = Console(width=250)
    with console.capture() as captured:
        console.print(tables.queue([item], NOW))
    assert "deferred" in captured.get() and "451 later" in captured.get()


def test_filters_keep_what_they_name() -> None:
    """Upstream, policy, state and received-before each narrow; no filter keeps all."""
    item = queuedmail.queued_item(1, ENV, None, queuedmail.Steering(), NOW)
    assert not queuedmail.Filter().narrows and queuedmail.keep(item, queuedmail.Filter())
    assert queuedmail.keep(item, queuedmail.Filter(received_before=NOW - timedelta(hours=1)))
    for where in (queuedmail.Filter(upstream="mail/other"), queuedmail.Filter(policy="a/b"),
                  queuedmail.Filter(state="held"),
                  queuedmail.Filter(received_before=NOW - timedelta(hours=3))):
        assert where.narrows and not queuedmail.keep(item, where)


def test_the_steering_folds_each_kind_and_counts_what_it_cannot_read() -> None:
    entries = _entries((names.suspend_key("mail/up"), SUSPENDED),
                       (names.hold_key("m1"), control.Hold(mail_id="m1", since=NOW)))
    entries["other.x"] = b"{}"
    entries[names.moving_key(3)] = b"not json"
    steer = queuedmail.steering(entries)
    assert (set(steer.suspended), set(steer.held), steer.moving, steer.unreadable) == (
        {"mail/up"}, {"m1"}, {}, 2)


def test_a_moves_dedupe_id_names_the_mail_the_message_and_the_target() -> None:
    """Running one move again gives the same id; another message or target another."""
    one = queuedmail.move_msg_id("m1", 7, "mail/new.relay")
    assert one == queuedmail.move_msg_id("m1", 7, "mail/new.relay") == (
        "m1.move.7.mail__new_relay")
    assert len({one, queuedmail.move_msg_id("m1", 8, "mail/new.relay"),
                queuedmail.move_msg_id("m1", 7, "mail/up")}) == 3
    copy = queuedmail.moved_envelope(ENV, 7, "mail/new")
    assert (copy.upstream, copy.moved_from, mail.attempts_key(copy)) == ("mail/new", 7, "m1")


def test_the_dispatcher_blocks_what_the_control_state_says_and_for_how_long() -> None:
    """A move under way, a hold and a suspension block for the hold delay; a suspension
    with an end no longer than until then, and not at all after it; a deleted entry
    unblocks; an unknown key is ignored."""
    state = dispatcher_control.State(delay_s=5.0)
    assert state.blocked("m1", "mail/up", 7, NOW) is None
    until = control.Suspension(upstream="mail/up", since=NOW, until=NOW + timedelta(seconds=2))
    assert state.apply(names.suspend_key("mail/up"), control.encoder.encode(until))
    assert state.blocked("m1", "mail/up", 7, NOW) == ("upstream suspended", 2.0)
    assert state.blocked("m1", "mail/up", 7, NOW + timedelta(seconds=3)) is None
    assert state.blocked("m1", "mail/other", 7, NOW) is None
    assert state.apply(names.hold_key("m1"), control.encoder.encode(
        control.Hold(mail_id="m1", since=NOW, reason="odd")))
    assert state.blocked("m1", "mail/other", 7, NOW) == ("held: odd", 5.0)
    assert state.apply(names.moving_key(7), control.encoder.encode(control.Moving(
        seq=7, mail_id="m1", to_upstream="mail/b", msg_id="x", since=NOW)))
    assert state.blocked("m1", "mail/up", 7, NOW) == ("being moved to mail/b", 5.0)
    for key in (names.moving_key(7), names.hold_key("m1"), names.suspend_key("mail/up")):
        assert state.apply(key, None)
    assert state.blocked("m1", "mail/up", 7, NOW) is None
    assert not state.apply("nonsense.k", b"{}")
    assert not state.apply(names.hold_key("m2"), b"[")


def test_a_blocked_mail_waits_without_an_attempt_and_never_expires() -> None:
    """The hold decision retries every recipient after the delay, counts no attempt, and
    has no dead verdict even for a mail far past any max queue age."""
    old = mail.Envelope(**{**{f: getattr(ENV, f) for f in ENV.__struct_fields__},
                           "received_at": NOW - timedelta(days=30)})
    decision = dispatcher_control.hold(dispatcher_control.Blocked("held", 5.0), old)
    assert decision.attempt == 0 and not decision.settled
    assert [(v.fate, v.rcpts, v.delay_s) for v in decision.verdicts] == [
        ("retry", ["b@x.org", "c@x.org"], 5.0)]


def test_trace_shows_the_upstreams_suspensions_around_a_mails_events() -> None:
    """A suspension in force when the mail's history starts and a resume within it are
    shown; another upstream's events and a suspension resumed before are not."""
    def at(minutes: int) -> datetime:
        return NOW + timedelta(minutes=minutes)

    history = [events.Held(mail_id="m1", at=at(1), upstream="mail/up"),
               events.Delivered(mail_id="m1", at=at(5), upstream="mail/up")]
    upstream_events = [
        events.Suspended(mail_id="", at=at(-10), upstream="mail/up"),
        events.Resumed(mail_id="", at=at(-9), upstream="mail/up"),
        events.Suspended(mail_id="", at=at(0), upstream="mail/up"),
        events.Resumed(mail_id="", at=at(3), upstream="mail/up"),
        events.Suspended(mail_id="", at=at(2), upstream="mail/other"),
    ]
    got = timeline.with_upstreams(history, upstream_events)
    assert [(events.kind_of(e), e.at) for e in got] == [
        ("suspended", at(0)), ("held", at(1)), ("resumed", at(3)), ("delivered", at(5))]
    assert timeline.with_upstreams([], upstream_events) == []


def test_status_marks_suspended_upstreams_and_their_oldest_mail() -> None:
    """A suspension in force marks its upstream (a row is added when it has none); an
    expired one does not; the oldest mail's age is shown where mail is queued."""
    report = statusreport.StatusReport(at=NOW, snapshot=None, upstreams=[
        statusreport.UpstreamStatus(upstream="mail/up", queued=3),
        statusreport.UpstreamStatus(upstream="mail/idle")])
    over = control.Suspension(upstream="mail/idle", since=NOW, until=NOW)
    new = control.Suspension(upstream="mail/new", since=NOW)
    got = statusreport.with_queue(report, [SUSPENDED, over, new],
                                  {"mail/up": NOW - timedelta(minutes=10)})
    rows = {row.upstream: row for row in got.upstreams}
    assert [(u, r.suspended, r.oldest_age_s) for u, r in sorted(rows.items())] == [
        ("mail/idle", False, None), ("mail/new", True, None), ("mail/up", True, 600.0)]
    assert rows["mail/up"].suspended_reason == "blocked"
