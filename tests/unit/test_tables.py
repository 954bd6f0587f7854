"""The rich tables people read, rendered with ``console.capture()``: what each shows, and
that data from the bus is never read as markup."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console, RenderableType

from admin.rules import caughtmail, deadletters, statusreport
from podpost import tables
from runtime import requeueing
from schemas import events, mail

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def render(renderable: RenderableType) -> str:
    console = Console(width=240, color_system=None, force_terminal=False)
    with console.capture() as capture:
        console.print(renderable)
    return capture.get()


def envelope(**kwargs: object) -> mail.Envelope:
    fields: dict[str, object] = {
        "id": "mailone", "policy": "apps/web", "upstream": "mail/up",
        "mail_from": "app@example.org", "rcpt_to": ["you@example.org", "them@example.org"],
        "received_at": NOW - timedelta(hours=2), "size": 5, "body": b"hello"}
    fields.update(kwargs)
    return mail.Envelope(**fields)  # type: ignore[arg-type]


def dead(seq: int = 3, **kwargs: object) -> tuple[deadletters.DeadItem, mail.DeadLetter]:
    letter = mail.DeadLetter(envelope=envelope(**kwargs), fate="permanent", reason="",
                             code=550, reply="5.1.1 [bold]no[/bold] such user", attempts=2,
                             dead_at=NOW - timedelta(hours=3, minutes=12, seconds=5))
    return deadletters.dead_item(seq, letter), letter


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59, "59s"), (3600 * 3 + 12 * 60 + 5, "3h12m"), (86400 * 2 + 7, "2d7s"),
    (-90, "in 1m30s"),
])
def test_ago(seconds: float, text: str) -> None:
    """Ages show the two largest units; a time in the future says so."""
    assert tables.ago(NOW, NOW - timedelta(seconds=seconds)) == text
    assert tables.ago(NOW, None) == "-"


def test_when_is_utc_to_the_second() -> None:
    """Times are shown in UTC whatever zone they were written in."""
    there = datetime(2026, 11, 23, 13, 40, 7, 999, tzinfo=UTC).astimezone(
        zoneinfo.ZoneInfo("Europe/Berlin"))
    assert tables.when(there) == "2026-11-23 13:40:07Z"


def test_dead_letters_show_a_row_each_and_markup_as_written() -> None:
    """Each dead letter is one row with its id, age, route, code and reply; a reply that
    looks like rich markup is printed as written; several recipients are summarised."""
    item, _ = dead()
    text = render(tables.dead_letters([item], NOW))
    assert "1 dead letter" in text and "1 dead letters" not in text
    row = next(line for line in text.splitlines() if "mailone" in line)
    for cell in ("3", "3h12m ago", "mail/up", "apps/web", "permanent", "550", "2",
                 "you@example.org +1", "5.1.1 [bold]no[/bold] such user"):
        assert cell in row, cell


def test_one_dead_letter_in_detail() -> None:
    """``dlq show`` names every field, where the body is and what it replays."""
    ref = mail.BodyRef(name="obj-1", size=300000, sha256="x")
    item, letter = dead(body=None, body_ref=ref, replay_of=2)
    text = render(tables.dead_letter(item, letter, NOW))
    assert "dead letter 3" in text
    for line in ("mail id        mailone", "code           550",
                 "dead at        2026-11-23 08:47:55Z (3h12m ago)",
                 "to             you@example.org, them@example.org",
                 "body           object store 'obj-1', 300000 bytes", "replay of      2"):
        assert line in text, line


def test_caught_mail_shows_headers_then_text() -> None:
    """``caught show`` prints the envelope, the headers as written, then the text."""
    item = caughtmail.caught_item(1, mail.Caught(envelope=envelope(), caught_at=NOW), "hi")
    message = caughtmail.read_message(b"Subject: hi\r\nX-Odd: [red]x[/red]\r\n\r\nbody text\r\n")
    text = render(tables.caught_mail(item, message))
    assert "caught mail 1" in text
    assert "X-Odd: [red]x[/red]" in " ".join(text.split())
    assert text.rstrip().endswith("body text")
    listed = render(tables.caught_list([item], NOW))
    assert "1 caught mail" in listed and "hi" in listed


def test_trace_lists_events_in_order_with_details() -> None:
    """A mail's events are rows in the order given, each with what it adds."""
    history: list[events.AnyEvent] = [
        events.Accepted(mail_id="m", at=NOW, policy="apps/web", upstream="mail/up",
                        rcpt_count=1, size=10, client_ip="10.0.0.5"),
        events.Attempted(mail_id="m", at=NOW, attempt=1, rcpt_count=1),
        events.Deferred(mail_id="m", at=NOW, retry_in_s=300, attempt=1, code=451,
                        reply="try later", rcpt_to=["a@x"]),
        events.Delivered(mail_id="m", at=NOW, attempt=2, code=250, rcpt_to=["a@x"]),
        events.Replayed(mail_id="m", at=NOW, dead_seq=4, to_upstream="mail/other"),
    ]
    text = render(tables.trace("m", history))
    assert "mail m: 5 events" in text
    kinds = [w for line in text.splitlines() for w in line.split()
             if w in {"accepted", "attempted", "deferred", "delivered", "replayed"}]
    assert kinds == ["accepted", "attempted", "deferred", "delivered", "replayed"]
    for detail in ("1 rcpt, 10 bytes from 10.0.0.5", "attempt 1, retry in 5m; a@x",
                   "try later", "dead letter 4 to mail/other"):
        assert detail in text, detail


def test_status_rows_and_caption() -> None:
    """Upstreams in bold rows with their policies indented underneath; the snapshot's
    revision and age in the caption; an upstream the snapshot lacks is flagged."""
    report = statusreport.StatusReport(
        at=NOW,
        snapshot=statusreport.SnapshotStatus(revision=7, generated_at=NOW - timedelta(minutes=5),
                                             age_s=300.0),
        upstreams=[
            statusreport.UpstreamStatus(upstream="mail/gone", queued=1, known=False),
            statusreport.UpstreamStatus(
                upstream="mail/up", queued=4, in_flight=2, deferred=1, dead=3,
                policies=[statusreport.PolicyStatus(
                    policy="apps/web", queued=4, in_flight=2, deferred=1,
                    ratelimit=statusreport.RateUsage(maximum=100, period_s=3600, used=40))]),
        ])
    text = render(tables.status(report))
    assert "policy snapshot revision 7, 5m old (2026-11-23 11:55:00Z)" in text
    assert "mail/gone (not in snapshot)" in text
    policy_row = next(line for line in text.splitlines() if "apps/web" in line)
    assert [c.strip() for c in policy_row.split("│")][1:7] == [
        "apps/web", "4", "2", "1", "-", "40/100 per 1h"]
    empty = render(tables.status(statusreport.StatusReport(at=NOW, snapshot=None, upstreams=[])))
    assert "no policy snapshot published yet" in empty and "(nothing known yet)" in empty


def test_replays_and_purges() -> None:
    """A re-routed replay shows both upstreams; dry runs say what would happen."""
    replay = requeueing.Replay(seq=3, mail_id="m", policy="apps/web", from_upstream="mail/up",
                                to_upstream="mail/other", subject="s", msg_id="m.replay.3",
                                rcpt_to=["a@x"], outcome="queued")
    text = render(tables.replays([replay], dry_run=False))
    assert "replayed 1 dead letter" in text and "mail/up -> mail/other" in text
    assert "would replay 1" in render(tables.replays([replay], dry_run=True))
    purge = requeueing.Purge(seq=3, mail_id="m", outcome="purged", body="kept")
    text = render(tables.purges([purge, purge], dry_run=True))
    assert "would purge 2 dead letters" in text and "kept" in text
