"""`ingress.rules.rewriting`: the envelope sender and From: become the policy's verified
address, the original kept in Reply-To, every other byte unchanged."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ingress.rules import headers, rewriting

VERIFIED = "noreply@mail.provider.example"
BODY = b"\r\nHello,\r\nFrom: not a header\r\n"


def test_from_is_rewritten_and_the_original_goes_to_reply_to() -> None:
    """From: keeps its display name with the new address; Reply-To: gets the original
    From: value; the envelope sender is the verified address; the rest is untouched."""
    data = b"From: Shop <orders@shop.example>\r\nTo: a@b.example\r\nSubject: x\r\n" + BODY
    out = rewriting.rewrite("bounce@shop.example", data, VERIFIED)
    assert out.mail_from == VERIFIED
    assert out.data == (
        b"Reply-To: Shop <orders@shop.example>\r\n"
        b"From: Shop <noreply@mail.provider.example>\r\nTo: a@b.example\r\nSubject: x\r\n"
        + BODY)


def test_an_existing_reply_to_is_kept() -> None:
    """A message that has Reply-To: keeps it, and gets none added."""
    data = b"Reply-To: help@shop.example\r\nFrom: orders@shop.example\r\n" + BODY
    out = rewriting.rewrite("orders@shop.example", data, VERIFIED)
    assert out.data == (b"Reply-To: help@shop.example\r\nFrom: " + VERIFIED.encode()
                        + b"\r\n" + BODY)


def test_a_folded_from_is_replaced_whole() -> None:
    """A From: folded over several lines is replaced with its continuation lines."""
    data = b"Subject: x\r\nFrom: \"A long\r\n name\" <a@shop.example>\r\nTo: t@x.example\r\n" + BODY
    out = rewriting.rewrite("a@shop.example", data, VERIFIED)
    assert headers.from_addresses(out.data) == [VERIFIED]
    assert b"From: A long name <" + VERIFIED.encode() + b">\r\nTo: t@x.example\r\n" in out.data
    assert b"\r\n name\"" not in out.data  # the continuation line went with its field
    assert out.data.startswith(b'Reply-To: "A long name" <a@shop.example>\r\n')


def test_a_message_without_from_gets_one_and_the_envelope_sender_as_reply_to() -> None:
    """No From: at all: the verified address is added and the envelope sender goes to
    Reply-To:."""
    out = rewriting.rewrite("app@shop.example", b"Subject: x\r\n" + BODY, VERIFIED)
    assert out.data == (b"From: " + VERIFIED.encode() + b"\r\nReply-To: app@shop.example\r\n"
                        b"Subject: x\r\n" + BODY)


@given(body=st.binary(max_size=200), name=st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=20))
def test_only_from_changes(body: bytes, name: str) -> None:
    """Whatever the display name and the body: afterwards every From: address is the
    verified one, and the body bytes after the header section are unchanged."""
    data = b"From: " + name.encode() + b" <x@shop.example>\r\nSubject: s\r\n\r\n" + body
    out = rewriting.rewrite("x@shop.example", data, VERIFIED)
    assert headers.from_addresses(out.data) == [VERIFIED]
    assert out.data.endswith(b"\r\nSubject: s\r\n\r\n" + body)
