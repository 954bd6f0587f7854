"""SCRAM-SHA-1 and SCRAM-SHA-256 logins (RFC 5802, RFC 7677) to an upstream.

aiosmtplib speaks PLAIN, LOGIN and CRAM-MD5 only; kube-mail's ``authType`` also allows
SCRAM-SHA-1, and SCRAM-SHA-256 is its modern form. The SASL exchange itself (nonces, salted
password, proofs, the server's signature) is the `scramp` library's, a well-kept SCRAM
implementation (also pg8000's); this module only carries its messages over aiosmtplib's raw
command API, as RFC 4954 frames them:

    C: AUTH SCRAM-SHA-256 <b64 client-first>
    S: 334 <b64 server-first>
    C: <b64 client-final>
    S: 334 <b64 server-final>      (the server's signature, checked by scramp)
    C: <empty line>
    S: 235 2.7.0 Authentication successful

A server that answers ``235`` right after the client-final (sending its signature nowhere)
is refused: without the signature the client cannot tell the server knew the password.
"""

from __future__ import annotations

import base64

import aiosmtplib
import scramp

MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")
"""The ``authType`` values this module logs in with."""


class ScramFailed(aiosmtplib.SMTPAuthenticationError):
    """The upstream's answer broke the exchange (bad base64, a bad server signature)."""


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8"))


def _unb64(response: aiosmtplib.SMTPResponse) -> str:
    try:
        return base64.b64decode(response.message.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScramFailed(response.code, f"undecodable SCRAM challenge: {exc}") from exc


def _expect(response: aiosmtplib.SMTPResponse, code: int) -> None:
    if response.code != code:
        raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)


async def login(
    smtp: aiosmtplib.SMTP, mechanism: str, username: str, password: str, *, timeout_s: float
) -> aiosmtplib.SMTPResponse:
    """Log in with ``mechanism`` (one of `MECHANISMS`); the final ``235`` reply. Raises
    `aiosmtplib.SMTPAuthenticationError` (a login failure) for any refusal."""
    client = scramp.ScramClient([mechanism], username, password)
    first = await smtp.execute_command(
        b"AUTH", mechanism.encode("ascii"), _b64(client.get_client_first()), timeout=timeout_s)
    _expect(first, 334)
    try:
        client.set_server_first(_unb64(first))
        final = client.get_client_final()
    except scramp.ScramException as exc:
        raise ScramFailed(first.code, f"SCRAM server-first refused: {exc}") from exc
    second = await smtp.execute_command(_b64(final), timeout=timeout_s)
    if second.code == 235:
        raise ScramFailed(second.code, "upstream sent no SCRAM server signature")
    _expect(second, 334)
    try:
        client.set_server_final(_unb64(second))
    except scramp.ScramException as exc:
        await smtp.execute_command(b"*", timeout=timeout_s)  # abort the exchange
        raise ScramFailed(second.code, f"SCRAM server signature refused: {exc}") from exc
    done = await smtp.execute_command(b"", timeout=timeout_s)
    _expect(done, 235)
    return done
