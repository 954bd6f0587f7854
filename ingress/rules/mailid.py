"""The mail id: derived from the content, so a client retrying a transaction is queued once.

A client that got ``451`` retries minutes later in a new transaction. The id is the
JetStream ``Nats-Msg-Id``, so the MAIL stream's duplicate window (an hour) drops the retry
if the first attempt was stored after all. It hashes the envelope sender, the recipients
(sorted: their order carries no meaning) and the DATA bytes exactly as received, before
podpost adds any header. Each part is length-prefixed so no two envelopes hash alike by
shifting bytes between parts. Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

LENGTH = 26
"""26 base32 characters carry 130 bits of the SHA-256."""


def _address(address: str) -> bytes:
    raw = address.encode("utf-8", "surrogateescape")
    return b"%d:" % len(raw) + raw


def compute(mail_from: str, rcpt_to: Iterable[str], data: bytes) -> str:
    """sha256 over sender, sorted recipients and data -> 26 lower-case base32 characters."""
    digest = hashlib.sha256()
    digest.update(b"podpost-mail-id-v1\n")
    digest.update(_address(mail_from))
    recipients = sorted(rcpt_to)
    digest.update(b"%d;" % len(recipients))
    for rcpt in recipients:
        digest.update(_address(rcpt))
    digest.update(b"%d:" % len(data))
    digest.update(data)  # not concatenated: data may be 25 MiB
    return base64.b32encode(digest.digest()).decode("ascii").lower()[:LENGTH]
