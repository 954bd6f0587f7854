"""The ingress's decisions at MAIL, RCPT and DATA, and the replies they choose."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.rules import admission, replies, routing
from schemas.snapshot import PolicySnapshot, PolicyView, Route

OPEN = PolicyView(key="apps/open", upstream="mail/relay")
STRICT = PolicyView(key="apps/strict", upstream="mail/relay",
                    allowed_senders=["app@example.com", "@Example.org"], max_message_size=1000)
SNAP = PolicySnapshot(
    generated_at=datetime(2025, 1, 1, tzinfo=UTC),
    policies={OPEN.key: OPEN, STRICT.key: STRICT},
    routes=[
        Route(network="10.0.0.0/8", policy=OPEN.key, source="static:apps/net"),
        Route(network="10.0.0.2/32", policy=STRICT.key, source="pod:apps/strict-1"),
        Route(network="10.0.0.3/32", policy="apps/gone", source="pod:apps/orphan"),
    ],
)
INDEX = routing.build(SNAP.routes)
LIMIT = 5000


def _mail(ip: str, sender: str, declared: int | None = None,
          snap: PolicySnapshot | None = SNAP) -> admission.Admitted | admission.Refusal:
    index = routing.build(snap.routes) if snap is not None else None
    return admission.at_mail(snap, index, ip, sender, declared=declared, global_limit=LIMIT)


@pytest.mark.parametrize(
    ("ip", "sender", "declared", "reply"),
    [
        ("10.0.0.1", "x@y.test", None, None),
        ("10.0.0.1", "x@y.test", LIMIT, None),
        ("10.0.0.1", "x@y.test", LIMIT + 1,
         "552 5.3.4 Message size exceeds fixed maximum message size of 5000 bytes"),
        ("10.0.0.2", "app@example.com", 1000, None),
        ("10.0.0.2", "anyone@EXAMPLE.ORG", None, None),
        ("10.0.0.2", "app@example.com", 1001, "552 5.3.4"),  # the policy's own limit
        ("10.0.0.2", "x@y.test", None, "550 5.7.1 Sender <x@y.test>"),
        ("10.0.0.3", "x@y.test", None, "550 5.7.1"),  # a route whose policy is missing
        ("192.168.0.1", "x@y.test", None, "550 5.7.1 No policy admits client 192.168.0.1"),
        ("junk", "x@y.test", None, "550 5.7.1 No policy admits client junk"),
    ],
)
def test_at_mail(ip: str, sender: str, declared: int | None, reply: str | None) -> None:
    """Each row: the client's IP, sender and SIZE= give an admission or this refusal."""
    verdict = _mail(ip, sender, declared)
    if reply is None:
        assert isinstance(verdict, admission.Admitted)
    else:
        assert isinstance(verdict, admission.Refusal)
        assert verdict.reply.startswith(reply)
        assert verdict.stage == "mail"


def test_no_snapshot_yet_is_a_temporary_refusal() -> None:
    """Before the first snapshot every client is told to come back: 451 4.3.0."""
    verdict = _mail("10.0.0.1", "x@y.test", snap=None)
    assert isinstance(verdict, admission.Refusal)
    assert verdict.reply.startswith("451 4.3.0 ")
    assert verdict.code == 451


def test_admitted_carries_route_policy_and_limit() -> None:
    """The admission names the route matched and the effective size limit."""
    verdict = _mail("10.0.0.2", "app@example.com")
    assert verdict == admission.Admitted(route=SNAP.routes[1], policy=STRICT, size_limit=1000)
    wide = _mail("10.0.0.9", "x@y.test")
    assert isinstance(wide, admission.Admitted)
    assert wide.size_limit == LIMIT and wide.route.source == "static:apps/net"


@pytest.mark.parametrize(
    ("options", "size"),
    [([], None), (["BODY=8BITMIME"], None), (["SIZE=123"], 123), (["size=77", "SMTPUTF8"], 77),
     (["SIZE="], None), (["SIZE=abc"], None), (["SIZE"], None)],
)
def test_declared_size(options: list[str], size: int | None) -> None:
    """SIZE= is read from the MAIL parameters when present and numeric."""
    assert admission.declared_size(options) == size


@given(st.integers(min_value=0, max_value=50), st.integers(min_value=1, max_value=50))
def test_at_rcpt_refuses_exactly_beyond_the_maximum(accepted: int, maximum: int) -> None:
    """Property: a recipient is refused with 452 4.5.3 iff the maximum is already reached."""
    refusal = admission.at_rcpt(accepted, maximum)
    if accepted < maximum:
        assert refusal is None
    else:
        assert refusal is not None and refusal.reply.startswith("452 4.5.3 ")


STRICT_ADMITTED = admission.Admitted(route=SNAP.routes[1], policy=STRICT, size_limit=1000)


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"From: App <app@example.com>\r\n\r\nhi\r\n", None),
        (b"From: a@example.com, b@EXAMPLE.org\r\n\r\n", "550 5.7.1 From: address <a@example.com>"),
        (b"From: b@example.org, c@sub.example.org\r\n\r\n", "550 5.7.1 From: address"),
        (b"Subject: no from\r\n\r\n", "550 5.7.1 From: header missing"),
        (b"From: <<>>\r\n\r\n", "550 5.7.1 From: header missing or unreadable"),
        (b"From: app@example.com\r\n\r\n" + b"x" * 1000, "552 5.3.4"),
    ],
)
def test_at_data(data: bytes, reply: str | None) -> None:
    """The real size and every From: address are checked at DATA."""
    refusal = admission.at_data(STRICT_ADMITTED, data)
    if reply is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.reply.startswith(reply)
        assert refusal.stage == "data" and refusal.policy == STRICT


def test_at_data_without_allowed_senders_ignores_from() -> None:
    """A policy that lists no senders does not look at From: at all."""
    admitted = admission.Admitted(route=SNAP.routes[0], policy=OPEN, size_limit=LIMIT)
    assert admission.at_data(admitted, b"Subject: no from\r\n\r\n") is None


@pytest.mark.parametrize(
    ("status", "reply", "stage"),
    [
        ("552 Error: message size exceeds fixed maximum message size", replies.TOO_BIG, "mail"),
        ("552 Error: Too much mail data", replies.TOO_BIG, "data"),
        ("500 Command line too long", "500 5.5.2 Command line too long", ""),
        ("500 Line too long (see RFC5321 4.5.3.1.6)", "500 5.5.2 Line too long", ""),
        ('500 Error: command "\x00\x01" not recognized', "500 5.5.1 Command not recognized", ""),
    ],
)
def test_aiosmtpd_builtin_replies_get_enhanced_codes(status: str, reply: str, stage: str) -> None:
    """aiosmtpd's own size refusals become 552 5.3.4, reported as rejections."""
    known = replies.builtin(status)
    assert known is not None
    assert known.reply.startswith(reply) and known.stage == stage
    assert replies.builtin("250 OK") is None
