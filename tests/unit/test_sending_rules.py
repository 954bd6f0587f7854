"""The pure rules of `dispatcher.sending`: which exception is which failure, and which
MAIL FROM parameters a mail gets."""

from __future__ import annotations

import ssl

import aiosmtplib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher import sending
from dispatcher.rules.outcome import Outcome


def _wrapped_ssl_error() -> Exception:
    """What aiosmtplib raises when an implicit-TLS handshake fails."""
    try:
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        except OSError as exc:
            raise aiosmtplib.SMTPConnectError("Error connecting") from exc
    except aiosmtplib.SMTPConnectError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "stage", "failure", "code"),
    [
        (ConnectionRefusedError(111, "refused"), "connect", "connect", None),
        (aiosmtplib.SMTPConnectError("Error connecting"), "connect", "connect", None),
        (aiosmtplib.SMTPConnectResponseError(421, "busy"), "connect", "connect", 421),
        (aiosmtplib.SMTPConnectTimeoutError("timed out"), "connect", "timeout", None),
        (aiosmtplib.SMTPReadTimeoutError("timed out"), "data", "timeout", None),
        (TimeoutError(), "rcpt", "timeout", None),
        (_wrapped_ssl_error(), "connect", "tls", None),
        (ssl.SSLError("wrong version number"), "tls", "tls", None),
        (aiosmtplib.SMTPResponseException(454, "TLS not available"), "tls", "tls", 454),
        (aiosmtplib.SMTPServerDisconnected("reset while upgrading"), "tls", "tls", None),
        (aiosmtplib.SMTPAuthenticationError(535, "bad login"), "auth", "auth", 535),
        (aiosmtplib.SMTPServerDisconnected("Connection lost"), "auth", "connect", None),
        (aiosmtplib.SMTPServerDisconnected("Connection lost"), "data", "connect", None),
        (aiosmtplib.SMTPHeloError(501, "bad hostname"), "greet", "protocol", 501),
        (ValueError("prohibited character"), "rcpt", "protocol", None),
        (sending.Refused("tls", "no STARTTLS"), "tls", "tls", None),
    ],
)
def test_every_exception_has_one_failure_class(
    exc: Exception, stage: sending.Stage, failure: str, code: int | None
) -> None:
    """failed() maps each exception (and stage) to its failure class and code."""
    outcome = sending.failed(exc, stage)
    assert (outcome.failure, outcome.code, outcome.rcpts) == (failure, code, [])
    assert outcome.reply


@pytest.mark.parametrize(
    ("extensions", "rcpt", "data", "params", "encoding"),
    [
        ({}, "a@x.org", b"Subject: hi\r\n\r\nhi", [], "ascii"),
        ({"size": "100"}, "a@x.org", b"0123456789", ["SIZE=10"], "ascii"),
        ({"8bitmime": ""}, "a@x.org", b"S: a\r\n\r\n\xc3\xa4", ["BODY=8BITMIME"], "ascii"),
        ({}, "a@x.org", b"S: a\r\n\r\n\xc3\xa4", [], "ascii"),
        ({"smtputf8": "", "8bitmime": ""}, "ä@x.org", b"hi",
         ["SMTPUTF8"], "utf-8"),
        ({"smtputf8": "", "8bitmime": ""}, "a@x.org", b"S: \xc3\xa4\r\n\r\nhi",
         ["BODY=8BITMIME", "SMTPUTF8"], "utf-8"),
        ({"smtputf8": "", "8bitmime": ""}, "a@x.org", b"S: a\r\n\r\n\xc3\xa4",
         ["BODY=8BITMIME"], "ascii"),
    ],
)
def test_mail_params_table(
    extensions: dict[str, str], rcpt: str, data: bytes, params: list[str], encoding: str
) -> None:
    """Parameters are added only when the server offers them and the mail needs them."""
    assert sending.mail_params(extensions, "from@x.org", [rcpt], data) == (params, encoding)


def test_utf8_address_without_smtputf8_is_refused_for_good() -> None:
    """A UTF-8 address cannot go to a server without SMTPUTF8: 553 5.6.7, like Postfix."""
    result = sending.mail_params({"8bitmime": ""}, "from@x.org", ["jörg@x.org"], b"hi")
    assert isinstance(result, Outcome)
    assert (result.failure, result.code) == ("protocol", 553)


_EXTENSIONS = st.dictionaries(st.sampled_from(["size", "8bitmime", "smtputf8", "pipelining"]),
                              st.just(""))
_ADDRESS = st.text(min_size=1, max_size=12).filter(lambda s: "\r" not in s and "\n" not in s)


@given(_EXTENSIONS, _ADDRESS, st.lists(_ADDRESS, min_size=1, max_size=4), st.binary())
def test_params_are_never_ones_the_server_did_not_offer(
    extensions: dict[str, str], mail_from: str, rcpts: list[str], data: bytes
) -> None:
    """SMTPUTF8, 8BITMIME and SIZE appear only when offered; SIZE is the body's length;
    addresses are encoded as UTF-8 only under SMTPUTF8."""
    result = sending.mail_params(extensions, mail_from, rcpts, data)
    if isinstance(result, Outcome):
        assert "smtputf8" not in extensions
        assert not all(a.isascii() for a in [mail_from, *rcpts])
        return
    params, encoding = result
    assert ("SMTPUTF8" in params) <= ("smtputf8" in extensions)
    assert ("BODY=8BITMIME" in params) <= ("8bitmime" in extensions)
    assert (f"SIZE={len(data)}" in params) == ("size" in extensions)
    assert (encoding == "utf-8") == ("SMTPUTF8" in params)
