"""Header fields: the ones read (From, Message-ID, Date) and the ones prepended."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.rules import headers

AT = datetime(2025, 4, 1, 10, 0, 0, tzinfo=UTC)


def _trace(**changes: object) -> headers.Trace:
    fields: dict[str, object] = dict(
        helo="client.test", ip="10.1.2.3", source="pod:default/app-1",
        hostname="mx.podpost.test", protocol="ESMTP", mail_id="abcdefghijklmnopqrstuvwxyz",
        rcpt_to=["to@example.com"], at=AT,
    )
    fields.update(changes)
    return headers.Trace(**fields)  # type: ignore[arg-type]


def test_received_records_helo_source_ip_host_protocol_id_and_date() -> None:
    """The Received field names who connected, from where, to whom, and when."""
    assert headers.received(_trace()) == (
        b"Received: from client.test (pod:default/app-1 [10.1.2.3])\r\n"
        b"\tby mx.podpost.test (podpost) with ESMTP id abcdefghijklmnopqrstuvwxyz\r\n"
        b"\tfor <to@example.com>; Tue, 01 Apr 2025 10:00:00 +0000\r\n"
    )


def test_received_with_several_recipients_names_none_and_ipv6_is_a_literal() -> None:
    """Several recipients are not listed; an IPv6 client is written as [IPv6:...]."""
    field = headers.received(_trace(rcpt_to=["a@x.test", "b@x.test"], ip="2001:db8::1",
                                    source=""))
    assert field == (
        b"Received: from client.test ([IPv6:2001:db8::1])\r\n"
        b"\tby mx.podpost.test (podpost) with ESMTP id abcdefghijklmnopqrstuvwxyz;\r\n"
        b"\tTue, 01 Apr 2025 10:00:00 +0000\r\n"
    )


@pytest.mark.parametrize(
    ("helo", "source", "expected"),
    [
        ("bad host\x00(x)", "pod:a/b (evil)\\", b"from bad?host??x? (pod:a/b ?evil?? [10.1.2.3])"),
        ("h\u00e9llo", "", b"from h?llo ([10.1.2.3])"),
        ("", "", b"from unknown ([10.1.2.3])"),
        ("x" * 600, "", b"from " + b"x" * 255 + b" ([10.1.2.3])"),
    ],
)
def test_received_neutralises_what_the_client_chose(
    helo: str, source: str, expected: bytes
) -> None:
    """A client's HELO can neither break the field's syntax nor make it overlong."""
    field = headers.received(_trace(helo=helo, source=source))
    assert field.startswith(b"Received: " + expected + b"\r\n")
    assert all(len(line) < 998 for line in field.split(b"\r\n"))


@pytest.mark.parametrize(
    ("extended", "smtputf8", "tls", "expected"),
    [(False, False, False, "SMTP"), (True, False, False, "ESMTP"), (True, False, True, "ESMTPS"),
     (True, True, False, "UTF8SMTP"), (True, True, True, "UTF8SMTPS")],
)
def test_protocol(extended: bool, smtputf8: bool, tls: bool, expected: str) -> None:
    """The ``with`` keyword follows RFC 3848 and RFC 6531."""
    assert headers.protocol(extended=extended, smtputf8=smtputf8, tls=tls) == expected


MID = b"Message-ID: <abcdefghijklmnopqrstuvwxyz@mx.podpost.test>\r\n"
DATE = b"Date: Tue, 01 Apr 2025 10:00:00 +0000\r\n"


@pytest.mark.parametrize(
    ("data", "added"),
    [
        (b"Subject: x\r\n\r\nbody\r\n", MID + DATE),
        (b"Message-ID: <m@x>\r\nSubject: x\r\n\r\nbody\r\n", DATE),
        (b"DATE: Mon, 31 Mar 2025 00:00:00 +0000\r\n\r\nbody\r\n", MID),
        (b"message-id:<m@x>\r\ndate:\r\n Mon, 31 Mar 2025 00:00:00 +0000\r\n\r\n", b""),
        (b"Subject: x\r\n\r\nMessage-ID: <in-body@x>\r\nDate: in body\r\n", MID + DATE),
        (b"Subject: x\nMessage-ID: <bare-lf@x>\n\nbody\n", DATE),  # bare LF line endings
        (b"no header section here\r\nDate: not a header\r\n", MID + DATE),
        (b"", MID + DATE),
    ],
)
def test_prefix_adds_message_id_and_date_only_when_missing(data: bytes, added: bytes) -> None:
    """Message-ID and Date are added when the header section lacks them, and only then."""
    assert headers.prefix(data, _trace()) == headers.received(_trace()) + added


@pytest.mark.parametrize(
    ("data", "addresses"),
    [
        (b"From: App <app@example.com>\r\n\r\n", ["app@example.com"]),
        (b"from: a@x.test, \"B, b\" <b@y.test>\r\n\r\n", ["a@x.test", "b@y.test"]),
        (b"From: =?utf-8?q?J=C3=B6rg?=\r\n <j@x.test>\r\n\r\n", ["j@x.test"]),  # folded
        (b"Subject: x\r\nFrom: a@x.test\r\nFrom: b@x.test\r\n\r\n", ["a@x.test", "b@x.test"]),
        (b"Subject: no from\r\n\r\nFrom: body@x.test\r\n", []),
        (b"From: \r\n\r\n", []),
    ],
)
def test_from_addresses(data: bytes, addresses: list[str]) -> None:
    """Every address of every From field in the header section, nothing from the body."""
    assert headers.from_addresses(data) == addresses


_lines = st.lists(
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=30,
)


@given(_lines)
def test_prefix_is_whole_fields_adding_only_what_is_missing(lines: list[bytes]) -> None:
    """Property: whatever the message, the prefix is complete CRLF-terminated fields,
    Received first, then exactly the ones of Message-ID/Date the message lacks."""
    data = b"\r\n".join(lines)
    prefix = headers.prefix(data, _trace())
    assert prefix.endswith(b"\r\n")
    assert b"\n" not in prefix.replace(b"\r\n", b"")
    added = [name for name, _ in headers.fields(prefix)]
    present = {name for name, _ in headers.fields(data)}
    assert added[0] == "received"
    assert set(added[1:]) == {"message-id", "date"} - present
    assert len(added) == len(set(added))


@given(st.sampled_from(["Message-ID", "message-id", "MESSAGE-ID"]),
       st.sampled_from(["Date", "date", "DATE"]))
def test_present_fields_are_never_added_again_whatever_their_case(mid: str, date: str) -> None:
    """Property: field names compare case-insensitively."""
    data = f"{mid}: <m@x>\r\n{date}: Mon, 31 Mar 2025 00:00:00 +0000\r\n\r\nbody".encode()
    assert headers.prefix(data, _trace()) == headers.received(_trace())
