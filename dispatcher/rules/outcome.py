"""What one delivery attempt to an upstream produced, as data.

`sending` turns every aiosmtplib exception into an `Outcome` at one place (kopf's
``Outcome``); `classify` decides each recipient's fate from it. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Failure = Literal["connect", "tls", "auth", "timeout", "protocol", "body", "busy"]
"""Why a session failed before the upstream gave a verdict on the recipients:
``connect`` refused/unreachable/dropped, ``tls`` handshake or certificate, ``auth``
login refused (its code says whether for good), ``timeout`` a command's deadline,
``protocol`` an unexpected reply, ``body`` the mail could not be read back, ``busy`` no
connection could be had under the installation's cap (nothing was sent: a wait)."""


class RcptResult(msgspec.Struct, frozen=True, kw_only=True):
    """The upstream's last word on one recipient: its RCPT refusal, or for an accepted
    recipient the reply to DATA."""

    rcpt: str
    code: int
    reply: str = ""


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    rcpts: list[RcptResult] = []
    """Per-recipient verdicts; empty when the session failed before them."""
    failure: Failure | None = None
    code: int | None = None
    """The SMTP code of the failing stage (e.g. 535 for AUTH, 421 for a greeting), if any."""
    reply: str = ""
    elapsed_s: float = 0.0
