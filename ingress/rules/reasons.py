"""Why a transaction was refused, as one short word: the ``reason`` label of
``podpost_ingress_rejected_total``.

The reply text is what `admission` and `replies` decide, so the reason is read back from
it rather than carried alongside (one source of truth); `replies` builds every reply, and
the unit tests feed each of them through `of`. Pure: no I/O.
"""

from __future__ import annotations

from ingress.rules import replies

NO_SNAPSHOT = "no_snapshot"
BROKER_UNAVAILABLE = "broker_unavailable"
INTERNAL_ERROR = "internal_error"
NO_POLICY = "no_policy"
POLICY_MISSING = "policy_missing"
SENDER_NOT_ALLOWED = "sender_not_allowed"
FROM_NOT_ALLOWED = "from_not_allowed"
TOO_BIG = "too_big"
TOO_MANY_RECIPIENTS = "too_many_recipients"
BAD_ADDRESS = "bad_address"
TLS_REQUIRED = "tls_required"
OTHER = "other"

_EXACT = {
    replies.NO_SNAPSHOT: NO_SNAPSHOT,
    replies.BROKER_DOWN: BROKER_UNAVAILABLE,
    replies.INTERNAL_ERROR: INTERNAL_ERROR,
    replies.TOO_MANY_RECIPIENTS: TOO_MANY_RECIPIENTS,
    replies.BAD_ADDRESS: BAD_ADDRESS,
    replies.TLS_REQUIRED: TLS_REQUIRED,
}


def _stem(reply: str) -> str:
    """The constant part of a reply built around a value: ``no_route("x")`` -> its text
    up to where the value goes."""
    return reply.split("\0", 1)[0]


_PREFIXES = (
    (replies.TOO_BIG, TOO_BIG),
    (_stem(replies.no_route("\0")), NO_POLICY),
    (_stem(replies.no_policy("\0")), POLICY_MISSING),
    (_stem(replies.sender_refused("\0")), SENDER_NOT_ALLOWED),
    (_stem(replies.from_refused("\0")), FROM_NOT_ALLOWED),
    (replies.from_refused(""), FROM_NOT_ALLOWED),
)


def of(reply: str) -> str:
    """The reason of a refusal's reply; `OTHER` for one this module does not know."""
    exact = _EXACT.get(reply)
    if exact is not None:
        return exact
    for prefix, reason in _PREFIXES:
        if reply.startswith(prefix):
            return reason
    return OTHER
