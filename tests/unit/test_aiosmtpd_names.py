"""aiosmtpd's private names the ingress (and the load kit's upstream) rely on still exist.

`ingress.protocol.IngressSMTP` overrides and calls aiosmtpd internals (``_getaddr``,
``_handle_client``, ``_create_envelope``, ``_set_post_data_state``...) and reads its
per-session state (``_reader``, ``_writer``, ``_timeout_handle``...). A renamed method would
not fail: the override would silently stop being called. pyproject pins aiosmtpd below its
next minor; these tests say what to check when that pin is raised.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Mapping

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP

from ingress import handler as handler_mod
from ingress import protocol
from ingress import sessions as sessions_mod
from loadkit import upstream
from runtime import bus, policies, settings

OVERRIDDEN_OR_CALLED = [
    "_getaddr", "_handle_client", "_set_post_data_state", "_create_envelope",
    "_call_handler_hook", "_reset_timeout", "_cb_client_connected",
    "check_helo_needed", "check_auth_needed", "handle_exception", "push", "smtp_DATA",
    "challenge_auth",
]
"""Methods of aiosmtpd's SMTP that IngressSMTP overrides through ``super()`` or calls."""

SESSION_STATE = ["_timeout_handle", "_handler_coroutine", "event_handler", "data_size_limit",
                 "envelope", "session", "transport", "_auth_methods"]
"""Attributes aiosmtpd's ``__init__`` sets that the ingress reads or writes."""


def _defined_by_aiosmtpd(name: str) -> bool:
    """``name`` is defined by aiosmtpd's SMTP itself (not only by our subclass or by
    asyncio's StreamReaderProtocol underneath)."""
    return any(name in vars(cls) for cls in SMTP.__mro__
               if cls.__module__.startswith("aiosmtpd."))


async def _session() -> protocol.IngressSMTP:
    """An IngressSMTP as ingress.main builds it, with the real handler; no connection is
    made, so the handler's bus connection is never used (None stands in)."""
    cfg = settings.IngressSettings()
    handler = handler_mod.Handler(typing.cast(bus.Conn, None), cfg, policies.SnapshotHolder(),
                                  "mx.test")
    return protocol.IngressSMTP(
        handler, sessions_mod.Sessions(cfg.max_sessions), hostname="mx.test",
        data_size_limit=cfg.max_message_size, enable_SMTPUTF8=True, decode_data=False,
        timeout=cfg.idle_timeout_s, loop=asyncio.get_running_loop())


def test_the_methods_the_ingress_overrides_or_calls_are_aiosmtpds() -> None:
    """Every SMTP method IngressSMTP overrides or calls is defined by aiosmtpd's SMTP, with
    ``_getaddr`` still returning (address, rest), and MISSING and syntax still exported."""
    missing = [name for name in OVERRIDDEN_OR_CALLED if not _defined_by_aiosmtpd(name)]
    assert missing == []
    assert all(callable(getattr(SMTP, name)) for name in OVERRIDDEN_OR_CALLED)
    assert inspect.iscoroutinefunction(SMTP._handle_client)
    assert inspect.iscoroutinefunction(SMTP._call_handler_hook)
    assert SMTP._getaddr(SMTP.__new__(SMTP), "<a@example.com> SIZE=1") == (
        "a@example.com", "SIZE=1")
    assert callable(aiosmtpd.smtp.syntax)
    assert aiosmtpd.smtp.MISSING is not None


def test_the_auth_names_the_ingress_uses_are_aiosmtpds() -> None:
    """`ingress.authenticating` answers AUTH in the handler's ``AUTH`` hook, which aiosmtpd
    calls before its own mechanisms, sends LOGIN's two challenges and reads the session's
    ``auth_data``; ``auth_require_tls`` is still a keyword of SMTP."""
    assert isinstance(SMTP.AuthLoginUsernameChallenge, str)
    assert isinstance(SMTP.AuthLoginPasswordChallenge, str)
    assert "_call_handler_hook('AUTH', args)" in inspect.getsource(SMTP.smtp_AUTH)
    assert "auth_require_tls" in inspect.signature(SMTP.__init__).parameters
    session = aiosmtpd.smtp.Session(typing.cast(asyncio.AbstractEventLoop, None))
    assert {"auth_data", "authenticated", "ssl", "peer"} <= set(vars(session))


def test_the_class_attributes_the_ingress_overrides_are_aiosmtpds() -> None:
    """``line_length_limit`` (the StreamReader's limit), ``command_size_limit`` and the
    class-level ``command_size_limits`` dict that IngressSMTP replaces per session."""
    for name in ("line_length_limit", "command_size_limit", "command_size_limits"):
        assert _defined_by_aiosmtpd(name), name
    assert isinstance(SMTP.line_length_limit, int)
    assert isinstance(SMTP.command_size_limit, int)
    assert isinstance(SMTP.command_size_limits, Mapping)


async def test_a_session_has_the_state_the_ingress_reads() -> None:
    """A fresh IngressSMTP has aiosmtpd's per-session attributes, its own
    command_size_limits (not the class's), the RFC line limit back on the instance, and
    our 5-argument handle_EHLO recognised as the new hook (``_ehlo_hook_ver``)."""
    session = await _session()
    absent = [name for name in SESSION_STATE if not hasattr(session, name)]
    assert absent == []
    assert session._timeout_handle is None and session._handler_coroutine is None
    assert session.command_size_limits is not SMTP.command_size_limits
    assert session.line_length_limit == SMTP.line_length_limit
    assert type(session).line_length_limit == protocol.READ_BUFFER
    assert session._ehlo_hook_ver == "new"
    assert isinstance(session._create_envelope(), handler_mod.Transaction)


async def test_a_connected_session_keeps_its_reader_and_writer() -> None:
    """aiosmtpd's client-connected callback stores the streams as ``_reader`` and
    ``_writer``, which the ingress's DATA reader uses."""
    session = await _session()
    reader = asyncio.StreamReader()
    writer = typing.cast(asyncio.StreamWriter, object())
    session._cb_client_connected(reader, writer)
    assert session._reader is reader
    assert session._writer is writer


async def test_the_upstream_sinks_private_names_exist() -> None:
    """The load kit's upstream closes sessions through ``_original_transport`` (the plain
    transport under STARTTLS) and cancels ``_handler_coroutine``: both set by aiosmtpd."""
    sink = upstream._TrackedSMTP(upstream.Handler(), hostname="upstream.test",
                                 loop=asyncio.get_running_loop())
    assert sink._original_transport is None
    assert sink._handler_coroutine is None
