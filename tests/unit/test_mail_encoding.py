"""An envelope on the bus: the binary form carries the body raw, and readers take both
forms, so old and new replicas meet in a rolling upgrade."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import mail

AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def envelope(body: bytes | None = b"Subject: hi\r\n\r\nbody\r\n", **kwargs: object
             ) -> mail.Envelope:
    fields: dict[str, object] = dict(
        id="m1", policy="apps.relay", upstream="apps.sink", mail_from="a@example.com",
        rcpt_to=["b@example.com", "ü@example.com"], received_at=AT, size=len(body or b""),
        client_ip="10.0.0.1", helo="app", body=body)
    fields.update(kwargs)
    return mail.Envelope(**fields)  # type: ignore[arg-type]


def test_the_binary_form_carries_the_body_as_its_bytes() -> None:
    """MessagePack holds the body verbatim, not base64, and is the smaller form."""
    body = bytes(range(256)) * 40
    binary = mail.encode_envelope(envelope(body))
    as_json = mail.encode_envelope(envelope(body), binary=False)
    assert body in binary
    assert body not in as_json and base64.b64encode(body) in as_json
    assert len(binary) < len(as_json) * 0.8


def test_a_reader_takes_the_json_an_older_ingress_wrote() -> None:
    """A JSON envelope (body in base64), as written before the binary form, reads back."""
    old = (b'{"id":"m1","policy":"p","upstream":"u","mail_from":"a@example.com",'
           b'"rcpt_to":["b@example.com"],"received_at":"2026-01-02T03:04:05.678Z",'
           b'"size":4,"body":"' + base64.b64encode(b"hi\r\n") + b'","future_field":1}')
    env = mail.envelope_decoder.decode(old)
    assert (env.body, env.received_at, env.rcpt_to) == (b"hi\r\n", AT, ["b@example.com"])


@pytest.mark.parametrize("binary", [True, False])
def test_both_forms_read_back_to_the_same_envelope(binary: bool) -> None:
    """Every field survives either form, a body reference as well as an inline body."""
    ref = mail.BodyRef(name="m1", size=10, sha256="ab" * 32)
    for env in (envelope(), envelope(body=None, body_ref=ref, replay_of=7, smtputf8=True)):
        assert mail.envelope_decoder.decode(mail.encode_envelope(env, binary=binary)) == env


def test_junk_is_a_decode_error_in_either_form() -> None:
    """What is no envelope raises msgspec's DecodeError, which the readers handle."""
    for junk in (b"", b"{", b"\x81\xa2id\x01", b"\xc1", b"not json"):
        with pytest.raises(msgspec.DecodeError):
            mail.envelope_decoder.decode(junk)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.booleans())
def test_any_body_round_trips(body: bytes, binary: bool) -> None:
    """Any bytes at all come back as they went in."""
    env = envelope(body)
    assert mail.envelope_decoder.decode(mail.encode_envelope(env, binary=binary)).body == body
