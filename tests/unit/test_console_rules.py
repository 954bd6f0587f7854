"""The web console's pure parts: a caught mail parsed into text, HTML and attachments,
the inbox search, the token check, the download header, and the dedupe and attempt keys
of a released mail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from console.rules import access, framing, inbox, message
from schemas import mail

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _mail() -> bytes:
    msg = EmailMessage()
    msg["From"] = "App <app@example.com>"
    msg["To"] = "a@example.org, B <b@example.org>"
    msg["Subject"] = "Grüße"
    msg["Date"] = "Sun, 01 Mar 2026 12:00:00 +0000"
    msg.set_content("plain words\n")
    msg.add_alternative("<p>html <b>words</b></p>", subtype="html")
    msg.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream",
                       filename="data.bin")
    msg.add_attachment("a,b\n1,2\n", subtype="csv", filename="täble.csv")
    return msg.as_bytes()


def test_a_mail_is_read_into_text_html_and_attachments() -> None:
    """The text and HTML bodies are found in a multipart/alternative inside a mixed
    mail; every other leaf is an attachment, numbered in document order, and the numbers
    fetch the decoded bytes."""
    raw = _mail()
    read = message.read(raw)
    assert (read.subject, read.from_, read.to) == (
        "Grüße", "App <app@example.com>", ["a@example.org", "B <b@example.org>"])
    assert read.date == NOW
    assert read.text == "plain words\n"
    assert read.html is not None and "<b>words</b>" in read.html
    assert [(a.index, a.filename, a.content_type) for a in read.attachments] == [
        (0, "data.bin", "application/octet-stream"), (1, "täble.csv", "text/csv")]
    first = message.attachment(raw, 0)
    assert first is not None and first.data == b"\x00\x01binary"
    assert message.attachment(raw, 2) is None
    assert message.subject_of(raw) == "Grüße"


@pytest.mark.parametrize(("raw", "text", "html"), [
    (b"Subject: s\r\nContent-Type: text/html\r\n\r\n<i>only html</i>\r\n",
     "(no text part: see the HTML)", "<i>only html</i>\n"),
    (b"Subject: s\r\n\r\njust text\r\n", "just text\n", None),
    (b"Subject: s\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\nbytes\r\n",
     None, None),
])
def test_odd_mails_are_read_leniently(raw: bytes, text: str | None, html: str | None) -> None:
    """An HTML-only mail, a bare text mail and an unknown charset are all readable."""
    read = message.read(raw)
    if text is not None:
        assert read.text == text
    assert read.html == html
    assert read.attachments == []


@given(st.binary(max_size=400))
def test_no_bytes_make_the_parser_fail(raw: bytes) -> None:
    """A catcher shows whatever an application sent: parsing never raises."""
    read = message.read(raw)
    assert isinstance(read.text, str)
    first = message.attachment(raw, 0)
    assert first is None or isinstance(first.data, bytes)


def _row(**changes: object) -> inbox.CaughtRow:
    base: dict[str, object] = dict(
        seq=1, mail_id="m1", namespace="team-a", policy="team-a/catch", pod="team-a/web-1",
        client_ip="10.0.0.1", mail_from="app@example.com", rcpt_to=["Ann@Example.org"],
        subject="Your invoice", caught_at=NOW, received_at=NOW, size=10)
    base.update(changes)
    return inbox.CaughtRow(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("search", "kept"), [
    (inbox.Search(), True),
    (inbox.Search(namespace="team-a"), True),
    (inbox.Search(namespace="team-b"), False),
    (inbox.Search(policy="team-a/catch"), True),
    (inbox.Search(pod="web"), True),
    (inbox.Search(sender="APP@"), True),
    (inbox.Search(sender="other"), False),
    (inbox.Search(recipient="ann@example"), True),
    (inbox.Search(recipient="bob"), False),
    (inbox.Search(subject="invoice"), True),
    (inbox.Search(mail_id="m2"), False),
    (inbox.Search(since=NOW), True),
    (inbox.Search(since=NOW + timedelta(seconds=1)), False),
    (inbox.Search(until=NOW), False),
    (inbox.Search(until=NOW + timedelta(seconds=1)), True),
])
def test_the_search_keeps_what_matches_every_given_field(search: inbox.Search,
                                                         kept: bool) -> None:
    """Text fields match case-insensitively as substrings; times bound caught_at."""
    assert inbox.keep(_row(), search) is kept


def test_lists_are_newest_first_and_inboxes_count_per_namespace() -> None:
    """`select` sorts by sequence, newest first, and cuts at the limit; one inbox per
    namespace."""
    rows = [_row(seq=1), _row(seq=3, namespace="team-b", policy="team-b/catch"), _row(seq=2)]
    assert [r.seq for r in inbox.select(rows, inbox.Search(), 2)] == [3, 2]
    assert [(i.namespace, i.count) for i in inbox.inboxes(rows)] == [("team-a", 2),
                                                                     ("team-b", 1)]


@pytest.mark.parametrize("bad", ["a.>", "A", "-a", "a*", "x" * 64, "team a"])
def test_a_namespace_must_be_a_dns_label(bad: str) -> None:
    """What reaches a subject filter is a Kubernetes namespace name, nothing else."""
    with pytest.raises(inbox.InvalidSearch):
        inbox.checked_namespace(bad)
    assert inbox.checked_namespace("team-a") == "team-a"
    assert inbox.checked_namespace("") is None


def test_the_pod_comes_from_the_routes_source() -> None:
    assert inbox.pod_of("pod:apps/web-1") == "apps/web-1"
    assert inbox.pod_of("static:dev/local") == "dev/local"
    assert inbox.pod_of("") == ""


@pytest.mark.parametrize(("header", "configured", "verdict"), [
    ("Bearer t0k", "t0k", access.Verdict.ALLOWED),
    ("bearer  t0k ", "t0k", access.Verdict.ALLOWED),
    ("Bearer wrong", "t0k", access.Verdict.NO_TOKEN),
    ("Basic t0k", "t0k", access.Verdict.NO_TOKEN),
    ("Bearer", "t0k", access.Verdict.NO_TOKEN),
    (None, "t0k", access.Verdict.NO_TOKEN),
    ("Bearer t0k", None, access.Verdict.READ_ONLY),
    ("Bearer ", "", access.Verdict.READ_ONLY),
])
def test_actions_need_the_configured_bearer_token(
    header: str | None, configured: str | None, verdict: access.Verdict
) -> None:
    """Only the configured token allows actions; no configured token allows none."""
    assert access.check(header, configured) is verdict


@given(st.text(max_size=60))
def test_a_download_header_is_always_an_attachment_with_a_safe_fallback(name: str) -> None:
    """Whatever the file is called, the header says attachment, its fallback name holds
    no quote, backslash, slash, semicolon or control character."""
    header = framing.download_disposition(name)
    assert header.startswith('attachment; filename="')
    fallback = header.split('"')[1]
    assert not set(fallback) & set('"\\/;') and fallback.isprintable()
    assert "\r" not in header and "\n" not in header


def test_the_mail_frame_policy_forbids_scripts_and_remote_content() -> None:
    """The frame's policy allows no script at all; remote images only when asked."""
    for remote in (False, True):
        csp = framing.mail_csp(remote=remote)
        assert "default-src 'none'" in csp and "script-src" not in csp and "sandbox" in csp
    assert "http:" not in framing.mail_csp(remote=False)
    assert "https:" in framing.mail_csp(remote=True)


def test_a_released_mail_has_its_own_dedupe_id_and_attempt_record() -> None:
    """Releasing one caught mail twice to one upstream is one id; to another upstream,
    another; its attempt key differs from the mail's own and from a replay's."""
    one = mail.release_msg_id("m1", 7, "mail/relay")
    assert one == mail.release_msg_id("m1", 7, "mail/relay")
    assert one != mail.release_msg_id("m1", 7, "mail/other")
    env = mail.Envelope(id="m1", policy="team-a/catch", upstream="mail/relay",
                        mail_from="a@x", rcpt_to=["b@y"], received_at=NOW, size=1)
    released = mail.Envelope(**{**{f: getattr(env, f) for f in env.__struct_fields__},
                                "released_from": 7})
    keys = {mail.attempts_key(env), mail.attempts_key(released),
            mail.attempts_key(mail.replay_envelope(released, 3, None))}
    assert len(keys) == 3
