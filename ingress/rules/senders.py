"""Whether a policy's ``allowed_senders`` admit an address.

Patterns are an exact address (``app@example.com``), or a whole domain (``@example.com``
or ``*@example.com``). Domains compare case-insensitively, local parts exactly (RFC 5321
lets a receiving system treat them as case-sensitive). An empty list admits anyone. The
same rule applies to the envelope sender and to every ``From:`` address. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _split(address: str) -> tuple[str, str] | None:
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain.lower().rstrip(".")


def matches(address: str, pattern: str) -> bool:
    """True when ``address`` is admitted by the single ``pattern``."""
    parts = _split(address)
    if parts is None:
        return False
    local, domain = parts
    pattern = pattern.strip()
    if pattern.startswith("*@"):
        pattern = pattern[1:]
    if pattern.startswith("@"):
        return domain == pattern[1:].lower().rstrip(".")
    wanted = _split(pattern)
    return wanted is not None and wanted == (local, domain)


def allowed(address: str, patterns: Sequence[str]) -> bool:
    """True when the policy admits ``address`` (always, when it lists no patterns)."""
    if not patterns:
        return True
    return any(matches(address, pattern) for pattern in patterns)


def first_refused(addresses: Iterable[str], patterns: Sequence[str]) -> str | None:
    """The first address the patterns do not admit, or None when all are admitted."""
    if not patterns:
        return None
    for address in addresses:
        if not allowed(address, patterns):
            return address
    return None
