"""Who may act: reading needs nothing, every action needs the console's bearer token.

Reading is open because the console shows what ``podpost caught list`` and ``dlq list``
show to anyone who can reach it; releasing, deleting, replaying and purging change the
bus, so they need ``Authorization: Bearer <token>`` (``PODPOST_CONSOLE__TOKEN``, from a
Secret in a cluster). With no token configured the console is read-only. Pure.
"""

from __future__ import annotations

import enum
import hmac


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    NO_TOKEN = "no-token"
    """The request carries no bearer token, or a wrong one: 401."""
    READ_ONLY = "read-only"
    """The console has no token configured: no action is possible; 403."""


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None otherwise."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check(authorization: str | None, configured: str | None) -> Verdict:
    """May this request act? The comparison takes the same time whatever matches."""
    if not configured:
        return Verdict.READ_ONLY
    given = bearer(authorization)
    if given is None:
        return Verdict.NO_TOKEN
    if hmac.compare_digest(given.encode(), configured.encode()):
        return Verdict.ALLOWED
    return Verdict.NO_TOKEN
