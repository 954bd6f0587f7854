"""The header fields the ingress reads (``From:``, ``Message-ID:``, ``Date:``) and the ones
it prepends (``Received:``, and ``Message-ID:``/``Date:`` when missing).

The message is never re-serialized: the email package would rewrite line endings, folding
and encodings, and the upstream must get the bytes the client sent. New fields are only
prepended, so the rest of the message stays byte-identical. Only the header section is
scanned, line by line, and it ends at the first empty line or the first line that is
neither a field nor a continuation. Pure: no I/O, the time is passed in.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterator
from datetime import datetime

import msgspec

_FIELD_RE = re.compile(rb"([!-9;-~]+)[ \t]*:")
_UNSAFE_RE = re.compile(r"[^!-~]|[()<>;\\]")
_UNSAFE_COMMENT_RE = re.compile(r"[^ -'*-\[\]-~]")
_MAX_TOKEN = 255


def _lines(data: bytes) -> Iterator[bytes]:
    """The lines of ``data`` without their line ending (CRLF, or a bare LF)."""
    start = 0
    size = len(data)
    while start < size:
        end = data.find(b"\n", start)
        if end < 0:
            yield data[start:]
            return
        line = data[start:end]
        yield line[:-1] if line.endswith(b"\r") else line
        start = end + 1


def fields(data: bytes) -> list[tuple[str, bytes]]:
    """The header fields as (lower-case name, unfolded raw value)."""
    out: list[tuple[str, bytes]] = []
    for line in _lines(data):
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if not out:
                break
            name, value = out[-1]
            out[-1] = (name, value + b" " + line.strip())
            continue
        match = _FIELD_RE.match(line)
        if match is None:
            break
        name = match.group(1).decode("ascii").lower()
        out.append((name, line[match.end():].strip()))
    return out


def has_field(data: bytes, name: str) -> bool:
    wanted = name.lower()
    return any(field == wanted for field, _ in fields(data))


def from_addresses(data: bytes) -> list[str]:
    """Every address of every ``From:`` field; an unparseable one comes back as ``""``."""
    values = [value.decode("utf-8", "replace") for name, value in fields(data)
              if name == "from"]
    return [address for _, address in email.utils.getaddresses(values)]


class Trace(msgspec.Struct, frozen=True, kw_only=True):
    """What the ``Received:`` field records about one transaction."""

    helo: str
    ip: str
    source: str
    """The route's identity of the client, e.g. ``pod:default/app-1``."""
    hostname: str
    protocol: str
    mail_id: str
    rcpt_to: list[str]
    at: datetime


def protocol(*, extended: bool, smtputf8: bool, tls: bool) -> str:
    """The ``with`` keyword of RFC 3848 / RFC 6531: SMTP, ESMTP, ESMTPS, UTF8SMTP(S)."""
    if not extended:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "")


def _token(text: str) -> str:
    return _UNSAFE_RE.sub("?", text)[:_MAX_TOKEN] or "unknown"


def _comment(text: str) -> str:
    return _UNSAFE_COMMENT_RE.sub("?", text)[:_MAX_TOKEN]


def _address_literal(ip: str) -> str:
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def date(at: datetime) -> str:
    """An RFC 5322 date-time, e.g. ``Tue, 01 Apr 2025 10:00:00 +0000``."""
    return email.utils.format_datetime(at)


def received(trace: Trace) -> bytes:
    """The ``Received:`` field (RFC 5321 4.4), folded, with its CRLF."""
    comment = _comment(trace.source)
    origin = f"{comment} {_address_literal(trace.ip)}" if comment else _address_literal(trace.ip)
    lines = [
        f"Received: from {_token(trace.helo)} ({origin})",
        f"\tby {_token(trace.hostname)} (podpost) with {trace.protocol} id {trace.mail_id}",
    ]
    if len(trace.rcpt_to) == 1:
        rcpt = _token(trace.rcpt_to[0])
        lines.append(f"\tfor <{rcpt}>; {date(trace.at)}")
    else:  # several recipients: name none, as Postfix does
        lines[-1] += ";"
        lines.append(f"\t{date(trace.at)}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def message_id(mail_id: str, hostname: str) -> str:
    """A Message-ID made from the mail id, so a retried transaction gets the same one."""
    return f"<{mail_id}@{_token(hostname)}>"


def prefix(data: bytes, trace: Trace) -> bytes:
    """The bytes to put in front of ``data``: Received, and Message-ID/Date when missing."""
    present = {name for name, _ in fields(data)}
    out = [received(trace)]
    if "message-id" not in present:
        out.append(f"Message-ID: {message_id(trace.mail_id, trace.hostname)}\r\n".encode("ascii"))
    if "date" not in present:
        out.append(f"Date: {date(trace.at)}\r\n".encode("ascii"))
    return b"".join(out)
