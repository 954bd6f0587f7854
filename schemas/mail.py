"""The mail on the bus: `Envelope` on the MAIL stream, `DeadLetter` on DEAD, `Caught` on
CAUGHT, and the per-mail `AttemptRecord` podpost keeps in the ATTEMPTS bucket.

Bus messages never forbid unknown fields, and every new field gets a default, so old and
new replicas can meet during a rolling upgrade.

An `Envelope` travels in one of two forms: JSON (its body base64-encoded, a third larger)
or, from the ingress by default, MessagePack, whose body is the raw bytes. A reader
(`envelope_decoder`, used by the dispatcher and admin) tells them apart by the first byte
(JSON's ``{``, MessagePack's map) and accepts both, so replicas of either release meet in a
rolling upgrade: readers first, then writers (``ingress.binary_envelopes``).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas import names


class BodyRef(msgspec.Struct, frozen=True, kw_only=True):
    """A body too big to travel inline, kept in the BODIES object store under ``name``."""

    name: str
    size: int
    sha256: str


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    """The mail id, derived from sender, recipients and body: it is the dedupe key."""
    policy: str
    upstream: str
    mail_from: str
    rcpt_to: list[str]
    received_at: datetime
    size: int
    """Size of the stored message in bytes (with the headers podpost added)."""
    client_ip: str = ""
    source: str = ""
    helo: str = ""
    smtputf8: bool = False
    body: bytes | None = None
    """The whole message (headers and body) when it fits the inline limit."""
    body_ref: BodyRef | None = None
    replay_of: int | None = None
    """DEAD stream sequence this mail was replayed from, if it was."""
    released_from: int | None = None
    """CAUGHT stream sequence this mail was released from (the web console's release of a
    caught mail to an upstream), if it was."""
    moved_from: int | None = None
    """MAIL stream sequence of the message this one is an operator's copy of (``queue
    retry`` or ``queue move``): such a mail may have an attempt record already."""


def attempts_key(envelope: Envelope) -> str:
    """ATTEMPTS bucket key: a replayed mail, and a caught mail released to an upstream,
    start a fresh count of their own."""
    key = envelope.id
    if envelope.released_from is not None:
        key += f".c{envelope.released_from}.{names.key_ident(envelope.upstream)}"
    if envelope.replay_of is not None:
        key += f".r{envelope.replay_of}"
    return key


def failover_msg_id(mail_id: str, to_upstream: str) -> str:
    """``Nats-Msg-Id`` of a mail's copy on the upstream it fails over to: storing it again
    after a crash (within the duplicate window) stores it once."""
    return f"{mail_id}.failover.{names.key_ident(to_upstream)}"


def replay_msg_id(mail_id: str, dead_seq: int) -> str:
    """``Nats-Msg-Id`` of a dead letter's replay: replaying one dead letter twice (within
    the MAIL stream's duplicate window) queues it once."""
    return f"{mail_id}.replay.{dead_seq}"


def replay_envelope(envelope: Envelope, dead_seq: int, to_upstream: str | None) -> Envelope:
    """The envelope of a dead letter to queue again: marked as a replay of ``dead_seq`` (so
    it gets a fresh attempt count), maybe re-routed to ``to_upstream``."""
    return msgspec.structs.replace(envelope, replay_of=dead_seq,
                                   upstream=to_upstream or envelope.upstream)


def release_msg_id(mail_id: str, caught_seq: int, upstream: str) -> str:
    """``Nats-Msg-Id`` of a caught mail released to ``upstream``: releasing it twice to one
    upstream (within the duplicate window) queues it once; to another upstream, again."""
    return f"{mail_id}.release.{caught_seq}.{names.key_ident(upstream)}"


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    """podpost's own count of delivery attempts for one mail; rate-limit waits and
    redeliveries after a crash are not attempts, so the JetStream delivery counter is not
    trusted for this."""

    attempts: int = 0
    policy: str = ""
    upstream: str = ""
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    last_code: int | None = None
    last_reply: str = ""
    done: list[str] = []
    """Recipients already settled (delivered or dead-lettered): never sent again."""
    dead: list[str] = []
    """The recipients of ``done`` that were dead-lettered: while there are any, the body
    object is kept for their replay."""
    moved_to: str = ""
    """The upstream the dispatcher failed this mail over to, and ``moved_seq`` the MAIL
    sequence of the original it moved: that original, if redelivered, stores the copy
    again (same dedupe id) and is removed, never sent."""
    moved_seq: int = 0


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    envelope: Envelope
    """The mail, with ``rcpt_to`` narrowed to the recipients this dead letter is for."""
    fate: str
    """Why it is dead: ``permanent`` (a 5xx), ``expired`` (older than the max queue age),
    ``invalid`` (the mail cannot be read back, e.g. its body is gone)."""
    reason: str = ""
    code: int | None = None
    reply: str = ""
    attempts: int = 0
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    dead_at: datetime


class Caught(msgspec.Struct, frozen=True, kw_only=True):
    """A mail kept by the catcher sink."""

    envelope: Envelope
    caught_at: datetime


class EnvelopeDecoder:
    """Reads an `Envelope` in either form (see the module docstring); raises
    ``msgspec.DecodeError`` (a ``ValidationError`` is one) for anything else."""

    _JSON_START = frozenset(b"{ \t\r\n")

    def __init__(self) -> None:
        self._json = msgspec.json.Decoder(Envelope)
        self._msgpack = msgspec.msgpack.Decoder(Envelope)

    def decode(self, data: bytes | bytearray | memoryview) -> Envelope:
        if not data or data[0] in self._JSON_START:
            return self._json.decode(data)
        return self._msgpack.decode(data)


def encode_envelope(envelope: Envelope, *, binary: bool = True) -> bytes:
    """The bus form of ``envelope``: MessagePack (a raw body) or JSON (for readers older
    than the MessagePack form)."""
    if binary:
        return _msgpack_encoder.encode(envelope)
    return envelope_encoder.encode(envelope)


_msgpack_encoder = msgspec.msgpack.Encoder()
envelope_encoder = msgspec.json.Encoder()
"""JSON for the bus messages that stay JSON (and an `Envelope` for older readers)."""
envelope_decoder = EnvelopeDecoder()
dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
caught_decoder = msgspec.json.Decoder(Caught)
attempt_decoder = msgspec.json.Decoder(AttemptRecord)
