"""The DATA phase as data: where the message ends, and what the received bytes mean.

aiosmtpd reads DATA one line at a time in Python, about 140 awaits for a 10 KiB message
and the largest single cost of the ingress. `IngressSMTP.smtp_DATA` instead reads up to
each ``.<CRLF>`` (or a buffer's worth) and asks `ends_data` whether that dot starts a line;
`judge` then checks and un-stuffs the whole message at once. The replies are aiosmtpd's
own, so what a client sees does not change: a line over 1,000 characters (plus CRLF) is
``500 Line too long``, a message over the limit ``552``, both after the final dot.
Pure: no I/O.
"""

from __future__ import annotations

import enum

TERMINATOR = b".\r\n"
"""What `smtp_DATA` reads up to; the end of DATA when it starts a line."""
MAX_LINE = 1001
"""aiosmtpd's (RFC 5321's) limit on a DATA line, CRLF included."""


class Verdict(enum.Enum):
    OK = "ok"
    TOO_LONG = "too long"
    TOO_MUCH = "too much"


def ends_data(received: bytes | bytearray, chunk: bytes) -> bool:
    """True when ``chunk`` (which ends with `TERMINATOR`), read right after ``received``
    (the data so far, or at least its last two bytes), ends the DATA phase: its dot starts
    a line, or the data."""
    before = len(chunk) - len(TERMINATOR)
    tail = bytes(received[-2:]) + chunk[max(0, before - 2):before]
    return tail.endswith(b"\r\n") or (before == 0 and not received)


def judge(kept: bytes, *, complete: bool, received: int, limit: int | None
          ) -> tuple[Verdict, bytes]:
    """The verdict on the data before the final ``.<CRLF>`` and the message it carries,
    dot-stuffing removed. ``received`` counts every byte read; ``kept`` is all of them
    when ``complete``, else what was kept before the data went over ``limit``."""
    lines = kept.split(b"\r\n")
    if not complete:
        lines.pop()  # cut off mid-line when the limit was reached
    if max(map(len, lines), default=0) + 2 > MAX_LINE:
        return Verdict.TOO_LONG, b""
    if not complete or (limit and received > limit):
        return Verdict.TOO_MUCH, b""
    message = kept[1:] if kept.startswith(b".") else kept
    return Verdict.OK, message.replace(b"\r\n.", b"\r\n")
