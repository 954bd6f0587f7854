"""IngressSMTP's own ``__init__`` leaves a session in the state aiosmtpd's would.

The ingress skips aiosmtpd's per-session introspection (`ingress.protocol.IngressSMTP`);
if an aiosmtpd release set another attribute, or found other commands, hooks or AUTH
mechanisms, these tests say so.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import typing
import weakref
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from ingress import handler as handler_mod
from ingress import protocol
from ingress import sessions as sessions_mod
from runtime import bus, policies, settings

OURS = {"_handler", "_sessions", "_global_limit", "_peer", "line_length_limit",
        "_proxied_peer", "_active_at", "_unsent"}
"""Attributes only IngressSMTP sets."""


def _kwargs(**options: Any) -> dict[str, Any]:
    """As ingress.main builds a session, plus ``options``."""
    cfg = settings.IngressSettings()
    kwargs: dict[str, Any] = dict(
        hostname="mx.test", ident="ESMTP podpost", data_size_limit=cfg.max_message_size,
        enable_SMTPUTF8=True, decode_data=False, timeout=cfg.idle_timeout_s,
        auth_require_tls=False, loop=asyncio.get_running_loop())
    return kwargs | options


def _server_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


OPTIONS = {
    "plain": {},
    "starttls": {"tls_context": _server_tls()},
    "required": {"tls_context": _server_tls(), "require_starttls": True,
                 "auth_required": True, "auth_require_tls": True},
    "excluded": {"auth_exclude_mechanism": ["LOGIN"]},
}
"""The ingress's sessions without and with a certificate, and aiosmtpd's other options
the fast path takes."""


def _handler() -> handler_mod.Handler:
    return handler_mod.Handler(typing.cast(bus.Conn, None), settings.IngressSettings(),
                               policies.SnapshotHolder(), "mx.test")


def _shape(value: Any, owner: object) -> Any:
    """A comparable picture of one attribute value of session ``owner``."""
    if hasattr(value, "__func__") and hasattr(value, "__self__"):
        return ("method", value.__func__, "session" if value.__self__ is owner else
                type(value.__self__).__name__)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return (type(value).__name__, *(_shape(v, owner) for v in value))
    if isinstance(value, collections.defaultdict):
        return ("defaultdict", dict(value), value.default_factory and value.default_factory())
    if isinstance(value, dict):
        return {k: _shape(v, owner) for k, v in value.items()}
    if isinstance(value, asyncio.StreamReader):
        return ("reader", value._limit)  # type: ignore[attr-defined]
    if isinstance(value, weakref.ref):
        referent = value()
        return ("weakref", type(referent).__name__)
    if isinstance(value, asyncio.Future | collections.deque | asyncio.AbstractEventLoop):
        return type(value).__name__
    return value


def _aiosmtpd_built(handler: handler_mod.Handler, **options: Any) -> protocol.IngressSMTP:
    session = protocol.IngressSMTP.__new__(protocol.IngressSMTP)
    session.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
    SMTP.__init__(session, handler, **_kwargs(**options))
    return session


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
async def test_a_session_has_the_attributes_aiosmtpds_init_sets(options: dict[str, Any]
                                                                ) -> None:
    """Every attribute aiosmtpd's ``__init__`` sets, with an equal value (methods bound to
    the same objects), and no other besides the ingress's own."""
    handler = _handler()
    protocol.IngressSMTP(handler, sessions_mod.Sessions(10), **_kwargs())  # fills the tables
    ours = protocol.IngressSMTP(handler, sessions_mod.Sessions(10), **_kwargs(**options))
    theirs = _aiosmtpd_built(handler, **options)
    mine = {k: _shape(v, ours) for k, v in vars(ours).items() if k not in OURS}
    reference = {k: _shape(v, theirs) for k, v in vars(theirs).items()}
    assert mine == reference
    assert set(vars(ours)) - set(vars(theirs)) == OURS


async def test_a_session_answers_every_command_aiosmtpd_knows() -> None:
    """The command table holds every ``smtp_*`` method, bound to the session itself, and
    the hooks every ``handle_*`` of the handler: DATA is the ingress's chunked reader."""
    handler = _handler()
    session = protocol.IngressSMTP(handler, sessions_mod.Sessions(10), **_kwargs())
    verbs = {name[5:] for name in dir(session) if name.startswith("smtp_")}
    assert set(session._smtp_methods) == verbs
    assert session._smtp_methods["DATA"] == session.smtp_DATA
    assert set(session._handle_hooks) == {
        name[7:] for name in dir(handler) if name.startswith("handle_")}
    assert session._handle_hooks["MAIL"] == handler.handle_MAIL
