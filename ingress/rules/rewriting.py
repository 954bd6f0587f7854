"""Sender rewriting: a policy's mail leaves with the provider's verified address.

Providers (and the receivers' SPF and DMARC checks) accept mail only from domains the
sending account has verified: DMARC passes when the ``From:`` domain aligns with the
domain SPF or DKIM vouched for, which is the provider's. Switching providers would mean
changing every app's sender address; with ``rewriteSender`` the policy does it instead.
The envelope sender and every ``From:`` field become the policy's address (the display
name kept), and the original ``From:`` goes into ``Reply-To:`` when the message has none,
so replies still reach the app's address. A message signed by the app (DKIM over
``From:``) no longer verifies; the provider signs it anew.

Only the ``From:`` lines change and ``Reply-To:`` is prepended; every other byte stays as
the client sent it (see `headers`). Pure: no I/O.
"""

from __future__ import annotations

import email.utils
import re

import msgspec

_FIELD_RE = re.compile(rb"([!-9;-~]+)[ \t]*:")


class Rewritten(msgspec.Struct, frozen=True, kw_only=True):
    mail_from: str
    data: bytes


def _header_spans(data: bytes) -> list[tuple[str, int, int]]:
    """(lower-case name, start, end) of every header field, continuation lines included;
    ``end`` is past the field's last line ending."""
    spans: list[tuple[str, int, int]] = []
    pos, size = 0, len(data)
    while pos < size:
        nl = data.find(b"\n", pos)
        end = size if nl < 0 else nl + 1
        line = data[pos:end].rstrip(b"\r\n")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if not spans:
                break
            name, start, _ = spans[-1]
            spans[-1] = (name, start, end)
        else:
            match = _FIELD_RE.match(line)
            if match is None:
                break
            spans.append((match.group(1).decode("ascii").lower(), pos, end))
        pos = end
    return spans


def _value(raw: bytes) -> str:
    """A field's value, unfolded, as text."""
    _, _, value = raw.partition(b":")
    return " ".join(value.decode("utf-8", "replace").split())


def rewrite(mail_from: str, data: bytes, address: str) -> Rewritten:
    """The envelope sender and ``From:`` set to ``address``; the original ``From:`` in a
    prepended ``Reply-To:`` when the message has none. A message without ``From:`` gets
    one, and its original envelope sender (when not empty) as ``Reply-To:``."""
    spans = _header_spans(data)
    names = {name for name, _, _ in spans}
    froms = [(start, end) for name, start, end in spans if name == "from"]
    out = bytearray()
    original = ""
    cursor = 0
    for start, end in froms:
        value = _value(data[start:end])
        original = original or value
        parsed = email.utils.getaddresses([value])
        display = parsed[0][0] if parsed else ""
        out += data[cursor:start]
        out += _field("From", email.utils.formataddr((display, address)))
        cursor = end
    out += data[cursor:]
    prefix = b""
    if not froms:
        prefix += _field("From", address)
        original = mail_from
    if original and "reply-to" not in names:
        prefix += _field("Reply-To", original)
    return Rewritten(mail_from=address, data=prefix + bytes(out))


def _field(name: str, value: str) -> bytes:
    """One header field; a non-ASCII value (a UTF-8 display name) stays UTF-8, as an
    SMTPUTF8 message may carry it."""
    return f"{name}: {value}\r\n".encode()
