"""What the operator commands report, as data: ids, filters, replay envelopes, body
orphans, the status fold and message parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from admin.rules import caughtmail, deadletters, identifiers, statusreport
from runtime import requeueing
from schemas import mail, names, snapshot

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BUS = names.Bus()
BASE32_ID = "mfrggzdfmztwq2lknnwg23tpoa"


def envelope(**kwargs: object) -> mail.Envelope:
    fields: dict[str, object] = {
        "id": BASE32_ID, "policy": "apps/web", "upstream": "mail/up",
        "mail_from": "app@example.org", "rcpt_to": ["you@example.org"],
        "received_at": NOW - timedelta(hours=1), "size": 5, "body": b"hello"}
    fields.update(kwargs)
    return mail.Envelope(**fields)  # type: ignore[arg-type]


def letter(env: mail.Envelope | None = None, *, dead_at: datetime = NOW) -> mail.DeadLetter:
    return mail.DeadLetter(envelope=env or envelope(), fate="permanent", reason="refused",
                           code=550, reply="5.1.1 no", attempts=2, dead_at=dead_at)


@pytest.mark.parametrize(("texts", "seqs", "mail_ids"), [
    (["42"], (42,), ()),
    ([BASE32_ID], (), (BASE32_ID,)),
    ([" 7 ", "7", BASE32_ID, BASE32_ID], (7,), (BASE32_ID,)),
    (["3" * 32], (), ("3" * 32,)),  # a hex mail id without a letter is no sequence
    (["18446744073709551615"], (18446744073709551615,), ()),
    (["0f3a9c"], (), ("0f3a9c",)),
])
def test_parse_ids(texts: list[str], seqs: tuple[int, ...], mail_ids: tuple[str, ...]) -> None:
    """Digits that fit a uint64 are stream sequences; anything else is a mail id."""
    assert identifiers.parse_ids(texts) == identifiers.Ids(seqs=seqs, mail_ids=mail_ids)


@pytest.mark.parametrize("text", ["", "  ", "0", "a b", "ünicode", "tab\there"])
def test_parse_ids_refuses(text: str) -> None:
    """Empty, zero, spaced and non-ASCII ids are refused with a reason."""
    with pytest.raises(ValueError):
        identifiers.parse_ids([text])


@given(st.integers(min_value=1, max_value=2**64 - 1))
def test_every_sequence_parses_as_itself(seq: int) -> None:
    """Every stream sequence a server can hand out names itself."""
    assert identifiers.parse_ids([str(seq)]).seqs == (seq,)


def test_pick_names_items_by_sequence_and_mail_id() -> None:
    """A sequence names one item, a mail id every item of that mail; unknown ids are
    returned, and the picks come back in stream order."""
    items = [deadletters.dead_item(seq, letter(envelope(id=mid)))
             for seq, mid in [(1, "aaa"), (2, "bbb"), (3, "aaa")]]
    chosen, unknown = identifiers.pick(items, identifiers.Ids(seqs=(2, 9), mail_ids=("aaa", "zzz")))
    assert [item.seq for item in chosen] == [1, 2, 3]
    assert unknown == ["9", "zzz"]


@pytest.mark.parametrize(("where", "kept"), [
    (deadletters.Filter(), [1, 2, 3]),
    (deadletters.Filter(upstream="mail/other"), [3]),
    (deadletters.Filter(policy="apps/batch"), [2]),
    (deadletters.Filter(dead_since=NOW - timedelta(hours=2)), [1, 3]),
    (deadletters.Filter(dead_before=NOW - timedelta(hours=2)), [2]),
    (deadletters.Filter(upstream="mail/up", dead_before=NOW - timedelta(hours=2)), [2]),
])
def test_select(where: deadletters.Filter, kept: list[int]) -> None:
    """Each filter narrows on its own field; together they all must hold."""
    items = [
        deadletters.dead_item(1, letter()),
        deadletters.dead_item(2, letter(envelope(policy="apps/batch"),
                                    dead_at=NOW - timedelta(days=1))),
        deadletters.dead_item(3, letter(envelope(upstream="mail/other"))),
    ]
    assert [item.seq for item in deadletters.select(items, where)] == kept


def test_dead_item_carries_what_dlq_list_promises() -> None:
    """The JSON row of ``dlq list`` names the dead letter and says why it died."""
    ref = mail.BodyRef(name="obj", size=9, sha256="x")
    item = deadletters.dead_item(5, letter(envelope(body=None, body_ref=ref, replay_of=2)))
    assert (item.id, item.seq, item.policy, item.upstream, item.reason, item.code,
            item.attempts, item.dead_at, item.mail_from, item.rcpt_to, item.body_object,
            item.replay_of) == (5, 5, "apps/web", "mail/up", "refused", 550, 2, NOW,
                                "app@example.org", ["you@example.org"], "obj", 2)


def test_a_replay_is_marked_and_maybe_rerouted() -> None:
    """The replayed envelope names its dead letter and only changes the upstream when
    asked; its dedupe id is derived from the mail and the dead letter."""
    env = envelope()
    same = mail.replay_envelope(env, 12, None)
    moved = mail.replay_envelope(env, 12, "mail/other")
    assert (same.replay_of, same.upstream) == (12, "mail/up")
    assert (moved.replay_of, moved.upstream, moved.policy, moved.body) == (
        12, "mail/other", "apps/web", b"hello")
    assert mail.attempts_key(same) == f"{BASE32_ID}.r12"
    assert mail.replay_msg_id(BASE32_ID, 12) == f"{BASE32_ID}.replay.12"


def test_orphaned_bodies() -> None:
    """Only bodies nothing refers to any more are orphans, each once."""
    assert requeueing.orphaned(["b", "a", "c", "a"], ["c"]) == ["a", "b"]


def test_status_folds_counts_per_upstream_and_policy() -> None:
    """Queued per subject, ack-pending per consumer, future attempt records and dead
    letters per upstream fold into one row per upstream with its policies underneath;
    an upstream only the data knows is marked unknown."""
    snap = snapshot.PolicySnapshot(
        generated_at=NOW - timedelta(minutes=5),
        policies={"apps/web": snapshot.PolicyView(
            key="apps/web", upstream="mail/up",
            ratelimit=snapshot.RateLimit(maximum=100, period_s=3600.0))},
        upstreams={"mail/up": snapshot.UpstreamView(key="mail/up", host="h", port=25)},
        source="test")
    future = mail.AttemptRecord(policy="apps/web", upstream="mail/up",
                                next_attempt_at=NOW + timedelta(minutes=1))
    past = mail.AttemptRecord(policy="apps/web", upstream="mail/up",
                              next_attempt_at=NOW - timedelta(minutes=1))
    report = statusreport.status_report(
        BUS, now=NOW,
        queued={BUS.mail_subject("mail/up", "apps/web"): 4,
                BUS.mail_subject("mail/gone", "apps/old"): 1},
        consumers=[statusreport.ConsumerLoad(filter_subject=BUS.mail_subject("mail/up", "apps/web"),
                                             ack_pending=2)],
        attempts=[future, past], dead={BUS.dead_subject("mail/up"): 3}, snap=snap,
        revision=7)
    assert report.snapshot == statusreport.SnapshotStatus(
        revision=7, generated_at=snap.generated_at, age_s=300.0, source="test")
    gone, up = report.upstreams
    assert (gone.upstream, gone.queued, gone.known, gone.in_flight) == ("mail/gone", 1, False, 0)
    assert (up.upstream, up.queued, up.in_flight, up.deferred, up.dead, up.known) == (
        "mail/up", 4, 2, 1, 3, True)
    assert up.policies == [statusreport.PolicyStatus(
        policy="apps/web", queued=4, in_flight=2, deferred=1,
        ratelimit=statusreport.RateUsage(maximum=100, period_s=3600.0))]


def test_status_without_a_snapshot() -> None:
    """Before the first snapshot there is nothing to compare with: all rows are known."""
    report = statusreport.status_report(BUS, now=NOW, queued={}, consumers=[], attempts=[],
                                        dead={BUS.dead_subject("mail/up"): 1}, snap=None,
                                        revision=0)
    assert report.snapshot is None
    assert [(u.upstream, u.dead, u.known, u.policies) for u in report.upstreams] == [
        ("mail/up", 1, True, [])]


@pytest.mark.parametrize(("raw", "subject", "text"), [
    (b"Subject: hi\r\nFrom: a@b\r\n\r\nplain words\r\n", "hi", "plain words\n"),
    (b"Subject: html\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n", "html", "<p>x</p>\n"),
    (b"Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: application/pdf\r\n\r\n%PDF",
     "caf\u00e9", "(no text part; 69 bytes, application/pdf)"),
    (b"Subject: odd\r\nContent-Type: text/plain; charset=x-nope\r\n\r\nabc",
     "odd", "(the text part cannot be decoded: unknown encoding: x-nope)"),
])
def test_read_message(raw: bytes, subject: str, text: str) -> None:
    """A message is shown leniently: its subject and a readable text with plain line
    ends, or a note saying what there is instead."""
    view = caughtmail.read_message(raw)
    assert (view.subject, view.text) == (subject, text)
    assert caughtmail.subject_of(raw) == subject
