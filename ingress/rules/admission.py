"""Whether a transaction may go on, decided at MAIL, RCPT and DATA.

Each stage is one pure function: it takes the snapshot facts and the client's input and
returns either what was admitted or a `Refusal` carrying the exact reply. The handler
only acts on the answer. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ingress.rules import headers, replies, routing, senders
from schemas import snapshot


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    reply: str
    stage: str
    """``mail``, ``rcpt`` or ``data``."""
    policy: snapshot.PolicyView | None = None
    """The policy that refused, when the client got as far as one."""

    @property
    def code(self) -> int:
        return replies.code_of(self.reply)


class Admitted(msgspec.Struct, frozen=True, kw_only=True):
    """A client admitted at MAIL: the route it matched and the policy that applies."""

    route: snapshot.Route
    policy: snapshot.PolicyView
    size_limit: int


def size_limit(policy: snapshot.PolicyView, global_limit: int) -> int:
    """The policy's max message size when it sets one, else the global one."""
    return policy.max_message_size if policy.max_message_size else global_limit


def declared_size(mail_options: Sequence[str]) -> int | None:
    """The ``SIZE=`` parameter of MAIL FROM (RFC 1870), when it is given and numeric."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def at_mail(
    snap: snapshot.PolicySnapshot | None,
    index: routing.Index | None,
    ip: str,
    sender: str,
    *,
    declared: int | None,
    global_limit: int,
    tls: bool = False,
    login: tuple[str, str] | None = None,
) -> Admitted | Refusal:
    """Client IP -> route -> policy (or, for a client that logged in with a policy's
    client login, ``login`` = (username, policy): that policy); then TLS when the policy
    requires it, the sender and the declared size."""
    if snap is None or index is None:
        return Refusal(reply=replies.NO_SNAPSHOT, stage="mail")
    if login is not None:
        route: snapshot.Route | None = snapshot.Route(
            network="", policy=login[1], source=f"login:{login[0]}")
    else:
        address = routing.parse_ip(ip)
        route = routing.lookup(index, address) if address is not None else None
    if route is None:
        return Refusal(reply=replies.no_route(ip), stage="mail")
    policy = snap.policies.get(route.policy)
    if policy is None:
        return Refusal(reply=replies.no_policy(ip), stage="mail")
    if policy.require_tls and not tls:
        return Refusal(reply=replies.TLS_REQUIRED, stage="mail", policy=policy)
    if not senders.allowed(sender, policy.allowed_senders):
        return Refusal(reply=replies.sender_refused(sender), stage="mail", policy=policy)
    limit = size_limit(policy, global_limit)
    if declared is not None and declared > limit:
        return Refusal(reply=replies.too_big(limit), stage="mail", policy=policy)
    return Admitted(route=route, policy=policy, size_limit=limit)


def at_rcpt(accepted: int, max_recipients: int) -> Refusal | None:
    """Refuse a recipient beyond the per-transaction maximum."""
    if accepted >= max_recipients:
        return Refusal(reply=replies.TOO_MANY_RECIPIENTS, stage="rcpt")
    return None


def at_data(admitted: Admitted, data: bytes) -> Refusal | None:
    """The message's real size, then every ``From:`` address against the policy."""
    if len(data) > admitted.size_limit:
        return Refusal(reply=replies.too_big(admitted.size_limit), stage="data",
                       policy=admitted.policy)
    patterns = admitted.policy.allowed_senders
    if patterns:
        addresses = headers.from_addresses(data)
        if not addresses:
            return Refusal(reply=replies.from_refused(""), stage="data", policy=admitted.policy)
        refused = senders.first_refused(addresses, patterns)
        if refused is not None:
            return Refusal(reply=replies.from_refused(refused), stage="data",
                           policy=admitted.policy)
    return None
