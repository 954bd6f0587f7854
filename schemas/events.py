"""Events on the EVENTS stream, one tagged union: ``kind`` says which.

``podpost trace <id>`` reads them back. Each carries the mail id, time, policy and
upstream; where it applies, the SMTP reply.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    mail_id: str
    at: datetime
    policy: str = ""
    upstream: str = ""


class Accepted(Event, frozen=True, tag="accepted", kw_only=True):
    mail_from: str = ""
    rcpt_count: int = 0
    size: int = 0
    client_ip: str = ""
    duplicate: bool = False


class Rejected(Event, frozen=True, tag="rejected", kw_only=True):
    code: int
    reply: str = ""
    client_ip: str = ""
    stage: str = ""


class Attempted(Event, frozen=True, tag="attempted", kw_only=True):
    attempt: int
    rcpt_count: int = 0


class Deferred(Event, frozen=True, tag="deferred", kw_only=True):
    retry_in_s: float
    attempt: int = 0
    code: int | None = None
    reply: str = ""
    rcpt_to: list[str] = []


class Delivered(Event, frozen=True, tag="delivered", kw_only=True):
    attempt: int = 0
    code: int | None = None
    reply: str = ""
    rcpt_to: list[str] = []
    redelivered: bool = False
    """JetStream had handed the message out before without a record of how that ended:
    an earlier copy may have reached the upstream too (a duplicate)."""


class Dead(Event, frozen=True, tag="dead", kw_only=True):
    fate: str
    code: int | None = None
    reply: str = ""
    rcpt_to: list[str] = []


class Replayed(Event, frozen=True, tag="replayed", kw_only=True):
    dead_seq: int = 0
    to_upstream: str = ""


class Purged(Event, frozen=True, tag="purged", kw_only=True):
    dead_seq: int = 0


# --- the operator's steering of the queue (``podpost queue``) -------------------------------


class Held(Event, frozen=True, tag="held", kw_only=True):
    """An operator held the mail: no dispatcher attempts it until it is released."""

    reason: str = ""


class Released(Event, frozen=True, tag="released", kw_only=True):
    pass


class Suspended(Event, frozen=True, tag="suspended", kw_only=True):
    """An operator suspended ``upstream``; an upstream's event: ``mail_id`` is empty,
    ``podpost trace`` shows it with the mails of that upstream."""

    until: datetime | None = None
    reason: str = ""


class Resumed(Event, frozen=True, tag="resumed", kw_only=True):
    """An upstream's event, as `Suspended`."""


class Moved(Event, frozen=True, tag="moved", kw_only=True):
    """A queued mail was copied to ``to_upstream`` and the original removed: ``queue
    move``, or ``queue retry`` (``retry``: the same upstream, due now), or a dispatcher's
    failover (``reason``)."""

    from_seq: int = 0
    to_seq: int = 0
    to_upstream: str = ""
    retry: bool = False
    reason: str = ""
    """Set by a dispatcher's failover (``failover: ...``); empty for an operator's move."""


class Removed(Event, frozen=True, tag="removed", kw_only=True):
    """A queued mail was purged from the MAIL stream by an operator (``queue purge``)."""

    seq: int = 0


AnyEvent = (Accepted | Rejected | Attempted | Deferred | Delivered | Dead | Replayed | Purged
            | Held | Released | Suspended | Resumed | Moved | Removed)

KINDS: tuple[str, ...] = (
    "accepted", "rejected", "attempted", "deferred", "delivered", "dead", "replayed", "purged",
    "held", "released", "suspended", "resumed", "moved", "removed",
)
UPSTREAM_KINDS: tuple[str, ...] = ("suspended", "resumed")
"""Events about an upstream rather than one mail (their ``mail_id`` is empty)."""

event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(AnyEvent)


def kind_of(event: AnyEvent) -> str:
    """The tag of an event, for its subject."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]
