"""The operator's steering of the queue, as the CONTROL bucket holds it: suspended
upstreams, held mails, and the moves under way.

``podpost queue`` (the admin role) writes these; every dispatcher replica watches the
bucket and keeps them in memory (`dispatcher.control`), so a suspend or a hold reaches
every replica within the watch's latency. One key per entry, laid out by `schemas.names`
(``suspend.<upstream ident>``, ``hold.<mail id>``, ``moving.<MAIL sequence>``); a deleted
key ends the entry. Bus messages: new fields get defaults, unknown fields are ignored.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class Suspension(msgspec.Struct, frozen=True, kw_only=True):
    """No dispatcher attempts ``upstream`` while this is stored (and, with ``until``,
    before that time): its mail waits without an attempt being counted."""

    upstream: str
    since: datetime
    until: datetime | None = None
    """When the suspension ends by itself; None: until ``queue resume``."""
    reason: str = ""
    by: str = "operator"
    """Who wrote it: ``operator`` (``podpost queue suspend``) or ``dispatcher`` (a reply
    rule's ``suspend``, or ``wait`` on a server without quotas)."""


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    """Every queued copy of mail ``mail_id`` waits, unattempted, until released."""

    mail_id: str
    since: datetime
    reason: str = ""


class Moving(msgspec.Struct, frozen=True, kw_only=True):
    """A move of the MAIL message ``seq`` is under way (``queue move`` / ``queue retry``):
    its copy is being stored under ``msg_id``. Until the original is removed no
    dispatcher attempts it, so a move interrupted between storing the copy and removing
    the original never sends the mail twice; running the move again finishes it."""

    seq: int
    mail_id: str
    to_upstream: str
    msg_id: str
    since: datetime


suspension_decoder = msgspec.json.Decoder(Suspension)
hold_decoder = msgspec.json.Decoder(Hold)
moving_decoder = msgspec.json.Decoder(Moving)
encoder = msgspec.json.Encoder()
