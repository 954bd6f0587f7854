"""Mail the catcher kept, as ``podpost caught`` reports it: the rows of its list and a
stored message made readable (headers, Subject, the text part).

The commands print these Structs as tables (`podpost.tables`) or encode them with
``--json``. Pure: no I/O; a catcher shows whatever an application sent, so parsing is
lenient.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
from datetime import datetime

import msgspec

from schemas import mail


class CaughtItem(msgspec.Struct, frozen=True, kw_only=True):
    """One mail kept by the catcher; ``id`` is its CAUGHT stream sequence."""

    id: int
    seq: int
    mail_id: str
    policy: str
    caught_at: datetime
    mail_from: str
    rcpt_to: list[str]
    subject: str
    size: int


def caught_item(seq: int, caught: mail.Caught, subject: str) -> CaughtItem:
    env = caught.envelope
    return CaughtItem(
        id=seq, seq=seq, mail_id=env.id, policy=env.policy, caught_at=caught.caught_at,
        mail_from=env.mail_from, rcpt_to=list(env.rcpt_to), subject=subject, size=env.size,
    )


class MessageView(msgspec.Struct, frozen=True, kw_only=True):
    """A stored message as ``caught show`` prints it: headers and a readable text."""

    headers: list[tuple[str, str]]
    subject: str
    text: str
    """The text/plain part; else the text/html source; else a note saying what there is."""


def read_message(raw: bytes) -> MessageView:
    """Parse a message leniently: a catcher shows whatever an application sent."""
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    headers = [(name, str(value)) for name, value in message.items()]
    subject = str(message.get("Subject", ""))
    assert isinstance(message, email.message.EmailMessage)
    part = message.get_body(preferencelist=("plain", "html"))
    text: str
    if part is None:
        text = f"(no text part; {len(raw)} bytes, {message.get_content_type()})"
    else:
        try:
            content = part.get_content()
        except (LookupError, ValueError) as exc:  # unknown charset, broken encoding
            content = f"(the text part cannot be decoded: {exc})"
        text = content if isinstance(content, str) else f"({len(content)} bytes of binary)"
    text = text.replace("\r\n", "\n")  # SMTP's line ends; a terminal wants "\n"
    return MessageView(headers=headers, subject=subject, text=text)


def subject_of(raw: bytes) -> str:
    """The Subject header, read from the headers only."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        head + b"\r\n\r\n", headersonly=True)
    return str(message.get("Subject", ""))
