"""Every reply the ingress sends, with its enhanced status code (docs/architecture.md "One
mail's trip", steps 2-4), and the translation of aiosmtpd's own fixed replies into the same form.

aiosmtpd refuses some input before any hook runs (a ``SIZE=`` over its limit, too much
DATA, overlong lines) with replies that lack an enhanced code; `builtin` maps those onto
ours so a client always sees, for example, ``552 5.3.4``. Pure: no I/O.
"""

from __future__ import annotations

import msgspec

MAIL_OK = "250 2.1.0 Sender OK"
RCPT_OK = "250 2.1.5 Recipient OK"
NO_SNAPSHOT = "451 4.3.0 Policies are not loaded yet, try again later"
BROKER_DOWN = "451 4.3.0 Queue unavailable, try again later"
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
BAD_ADDRESS = "553 5.1.7 Address is not valid UTF-8"
TOO_MANY_SESSIONS = "421 4.3.2 Too many sessions, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
CLOSING = "421 4.4.2 Input ended, closing the connection"
TLS_REQUIRED = "530 5.7.0 This policy requires TLS: issue STARTTLS first"


def no_route(ip: str) -> str:
    return f"550 5.7.1 No policy admits client {ip}"


def no_policy(ip: str) -> str:
    return f"550 5.7.1 The policy for client {ip} is missing"


def sender_refused(address: str) -> str:
    return f"550 5.7.1 Sender <{address}> is not allowed for this client"


def from_refused(address: str) -> str:
    if not address:
        return "550 5.7.1 From: header missing or unreadable"
    return f"550 5.7.1 From: address <{address}> is not allowed for this client"


def too_big(limit: int) -> str:
    return f"{TOO_BIG} of {limit} bytes"


def queued(mail_id: str) -> str:
    return f"250 2.0.0 queued as {mail_id}"


def code_of(reply: str) -> int:
    """The three-digit code of a reply line."""
    return int(reply[:3])


class Builtin(msgspec.Struct, frozen=True):
    reply: str
    stage: str = ""
    """``mail``/``data`` when it refuses a transaction (reported as a rejection)."""


_BUILTIN: dict[str, Builtin] = {
    "552 Error: message size exceeds fixed maximum message size": Builtin(TOO_BIG, "mail"),
    "552 Error: Too much mail data": Builtin(TOO_BIG, "data"),
    "500 Line too long (see RFC5321 4.5.3.1.6)": Builtin(
        "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)"),
    "500 Command line too long": Builtin("500 5.5.2 Command line too long"),
    "500 Error: bad syntax": Builtin("500 5.5.2 Syntax error"),
    "500 Error: strict ASCII mode": Builtin("500 5.5.2 Syntax error"),
}


_UNRECOGNIZED = Builtin("500 5.5.1 Command not recognized")


def builtin(status: str) -> Builtin | None:
    """Our form of one of aiosmtpd's fixed replies, or None when ``status`` is not one.
    An unrecognized command is not echoed back: it may hold any bytes a client sent."""
    if status.startswith('500 Error: command "') and status.endswith('" not recognized'):
        return _UNRECOGNIZED
    return _BUILTIN.get(status)
