"""A caught mail made readable for the web console: its headers, the text part, the HTML
part, and its attachments, parsed from the stored bytes.

A catcher shows whatever an application sent, so parsing is lenient: a part that cannot be
decoded becomes a note, never an error. Nothing here is trusted: the console escapes every
string it shows and serves the HTML only inside a sandboxed frame under a content security
policy (`console.rules.framing`). Pure: bytes in, Structs out.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import email.utils
from datetime import datetime

import msgspec

_parser = email.parser.BytesParser(policy=email.policy.default)


class Attachment(msgspec.Struct, frozen=True, kw_only=True):
    """A part that is neither the text nor the HTML body; ``index`` names it in the URL."""

    index: int
    filename: str
    content_type: str
    size: int
    inline: bool
    """``Content-Disposition: inline`` (an image the HTML refers to by ``cid:``)."""


class Message(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    from_: str = msgspec.field(name="from")
    to: list[str]
    cc: list[str]
    date: datetime | None
    headers: list[tuple[str, str]]
    text: str
    """The text/plain part (or a note saying why there is none readable)."""
    html: str | None
    """The text/html part's source, None when the mail has none."""
    attachments: list[Attachment]


def _parse(raw: bytes) -> email.message.EmailMessage:
    message = _parser.parsebytes(raw)
    assert isinstance(message, email.message.EmailMessage)
    return message


def _content(part: email.message.EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError) as exc:  # unknown charset, bad encoding
        return f"(this part cannot be decoded: {exc})"
    if isinstance(content, bytes):
        return f"({len(content)} bytes of binary)"
    return str(content).replace("\r\n", "\n")


def _header(message: email.message.EmailMessage, name: str) -> str:
    try:
        return str(message.get(name, ""))
    except (ValueError, IndexError):  # a header the policy cannot parse
        return ""


def _addresses(message: email.message.EmailMessage, name: str) -> list[str]:
    values = [str(value) for value in message.get_all(name, [])]
    return [email.utils.formataddr(pair) if pair[0] else pair[1]
            for pair in email.utils.getaddresses(values) if pair[1]]


def _date(message: email.message.EmailMessage) -> datetime | None:
    text = _header(message, "Date")
    if not text:
        return None
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None


def _attachment_parts(message: email.message.EmailMessage,
                      bodies: set[int]) -> list[email.message.EmailMessage]:
    """Every leaf part that is not one of the chosen bodies, in document order."""
    out: list[email.message.EmailMessage] = []
    for part in message.walk():
        assert isinstance(part, email.message.EmailMessage)
        if part.is_multipart() or id(part) in bodies or part is message:
            continue
        out.append(part)
    return out


def _bodies(message: email.message.EmailMessage
            ) -> tuple[email.message.EmailMessage | None, email.message.EmailMessage | None]:
    if not message.is_multipart():
        kind = message.get_content_type()
        return (message if kind != "text/html" else None,
                message if kind == "text/html" else None)
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return (text if isinstance(text, email.message.EmailMessage) else None,
            html if isinstance(html, email.message.EmailMessage) else None)


def read(raw: bytes) -> Message:
    """Parse a stored message leniently."""
    message = _parse(raw)
    text_part, html_part = _bodies(message)
    chosen = {id(part) for part in (text_part, html_part) if part is not None}
    attachments = [
        Attachment(index=index, filename=part.get_filename() or f"part-{index}",
                   content_type=part.get_content_type(), size=len(_payload(part)),
                   inline=part.get_content_disposition() == "inline")
        for index, part in enumerate(_attachment_parts(message, chosen))
    ]
    if text_part is not None and text_part.get_content_maintype() == "text":
        text = _content(text_part)
    elif html_part is not None:
        text = "(no text part: see the HTML)"
    else:
        text = f"(no text part; {len(raw)} bytes, {message.get_content_type()})"
    return Message(
        subject=_header(message, "Subject"), from_=", ".join(_addresses(message, "From")),
        to=_addresses(message, "To"), cc=_addresses(message, "Cc"), date=_date(message),
        headers=[(name, _safe_str(value)) for name, value in message.raw_items()],
        text=text, html=None if html_part is None else _content(html_part),
        attachments=attachments,
    )


def _safe_str(value: object) -> str:
    return str(value).replace("\r\n", "\n")


def _payload(part: email.message.EmailMessage) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


class File(msgspec.Struct, frozen=True, kw_only=True):
    filename: str
    content_type: str
    data: bytes


def attachment(raw: bytes, index: int) -> File | None:
    """The decoded bytes of attachment ``index`` (as `read` numbers them); None if none."""
    message = _parse(raw)
    text_part, html_part = _bodies(message)
    chosen = {id(part) for part in (text_part, html_part) if part is not None}
    parts = _attachment_parts(message, chosen)
    if not 0 <= index < len(parts):
        return None
    part = parts[index]
    return File(filename=part.get_filename() or f"part-{index}",
                content_type=part.get_content_type(), data=_payload(part))


def subject_of(raw: bytes) -> str:
    """The Subject header, read from the headers only (for list rows)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    message = _parser.parsebytes(head + b"\r\n\r\n", headersonly=True)
    try:
        return str(message.get("Subject", ""))
    except (ValueError, IndexError):
        return ""
