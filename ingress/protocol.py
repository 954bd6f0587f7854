"""aiosmtpd's SMTP protocol as the ingress speaks it: one `IngressSMTP` per connection.

The listener's `ingress.sessions.Sessions` counts, caps and drains these sessions (each
leaves it when its connection is lost). A session reads the DATA phase by chunks
(`read_data`, judged by `rules.dataphase`), turns aiosmtpd's own fixed replies into ours
(`replies.builtin`) and reports the ones that refuse a transaction (a ``552`` for size)
like any other refusal. It also mends what aiosmtpd gets wrong for a relay: a per-session
command size limit, silence (not commands) as the idle timeout, a lone ``<`` as a
malformed address, and end of input as the end of a session.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import aiosmtpd.smtp
import structlog
from aiosmtpd.smtp import MISSING, SMTP, syntax

from ingress import handler as handler_mod
from ingress import proxying
from ingress import sessions as sessions_mod
from ingress.rules import admission, dataphase, paths, proxyheader, replies

log = structlog.get_logger("ingress.protocol")


READ_BUFFER = 16 * 1024
"""Bytes a session's reader buffers before pausing the socket. aiosmtpd uses its 1,001-byte
line limit, which pauses and resumes the socket every 2 KB of a body (a third of the
ingress's CPU at 10 KiB messages); 16 KiB keeps 2,000 sessions under 64 MiB of buffers.
A command line is still limited by aiosmtpd's command size limits, a DATA line by
1,001 bytes (``500 5.5.2 Line too long``)."""


async def read_data(reader: asyncio.StreamReader, limit: int | None
                    ) -> tuple[dataphase.Verdict, bytes]:
    """Read the DATA phase up to its final ``.<CRLF>``: a chunk per ``.<CRLF>`` or per
    buffer, keeping no more than ``limit`` bytes (the rest is read and dropped)."""
    kept = bytearray()
    tail = b""  # the last bytes read, once ``kept`` stops growing
    received = 0
    complete = True
    while True:
        try:
            chunk = await reader.readuntil(dataphase.TERMINATOR)
        except asyncio.LimitOverrunError as exc:
            chunk = await reader.read(exc.consumed)
        if chunk.endswith(dataphase.TERMINATOR) and dataphase.ends_data(
                kept if complete else tail, chunk):
            body = chunk[: -len(dataphase.TERMINATOR)]
            received += len(body)
            if complete and not (limit and received > limit):
                kept += body
            else:
                complete = False
            break
        received += len(chunk)
        if complete and limit and received > limit:
            complete = False  # stop keeping data, still read to the end
            tail = bytes(kept[-2:])
        if complete:
            kept += chunk
        else:
            tail = (tail + chunk)[-2:]
    return dataphase.judge(bytes(kept), complete=complete, received=received, limit=limit)


@dataclass(frozen=True)
class _Tables:
    """What aiosmtpd's ``SMTP.__init__`` finds by introspection, by attribute name: AUTH
    mechanisms ``(name, attribute, on the session)``, handler hooks ``(command,
    attribute)``, commands ``(verb, attribute)`` and the EHLO hook's form."""

    auth: tuple[tuple[str, str, bool], ...]
    hooks: tuple[tuple[str, str], ...]
    commands: tuple[tuple[str, str], ...]
    ehlo_version: str | None

    @classmethod
    def of(cls, session: SMTP) -> _Tables:
        """Read the tables off a session built by aiosmtpd's own ``__init__``."""
        return cls(
            auth=tuple((name, attr.method.__name__, attr.is_builtin)
                       for name, attr in session._auth_methods.items()),
            hooks=tuple((name, hook.__name__) for name, hook in session._handle_hooks.items()),
            commands=tuple((name, method.__name__)
                           for name, method in session._smtp_methods.items()),
            ehlo_version=session._ehlo_hook_ver,
        )


class IngressSMTP(SMTP):
    """aiosmtpd's SMTP protocol with session tracking, our replies and a per-transaction
    size limit that falls back to the global one after each transaction."""

    line_length_limit = READ_BUFFER
    """aiosmtpd sizes the session's StreamReader by this class attribute; the instance
    sets it back to the RFC's 1,000 (+1) bytes a DATA line may have, see `__init__`."""

    _tables: ClassVar[dict[type[Any], _Tables]] = {}
    """aiosmtpd's introspected tables per handler class, found once (see `__init__`)."""

    def __init__(
        self, handler: handler_mod.Handler, sessions: sessions_mod.Sessions, *,
        hostname: str, ident: str | None = None,
        data_size_limit: int | None = aiosmtpd.smtp.DATA_SIZE_DEFAULT,
        enable_SMTPUTF8: bool = False, decode_data: bool = False,
        tls_context: ssl.SSLContext | None = None, require_starttls: bool = False,
        timeout: float = 300, auth_required: bool = False, auth_require_tls: bool = True,
        auth_exclude_mechanism: Iterable[str] | None = None,
        auth_callback: Any = None, authenticator: Any = None,
        command_call_limit: int | dict[str, int] | None = None,
        proxy_protocol_timeout: float | None = None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """aiosmtpd's ``SMTP.__init__``, without its per-session introspection: it walks
        the class and the handler with ``inspect.getmembers`` and ``dir`` (a fifth of the
        ingress's CPU with a new connection per mail) to find tables that never change.
        They are read once per handler class off a session aiosmtpd built itself and bound
        here; the rest is aiosmtpd's own body. tests/unit/test_fast_session.py compares
        the result with aiosmtpd's for the ingress's options."""
        tables = self._tables.get(type(handler))
        if tables is None:
            reference = object.__new__(type(self))
            reference.command_size_limits = collections.defaultdict(
                lambda: SMTP.command_size_limit)
            SMTP.__init__(reference, handler, hostname=hostname, loop=loop)
            tables = self._tables[type(handler)] = _Tables.of(reference)
        if (command_call_limit is not None or proxy_protocol_timeout is not None
                or (auth_required and not auth_require_tls)):
            # what aiosmtpd validates or warns about for these: its own __init__
            self.command_size_limits = collections.defaultdict(
                lambda: SMTP.command_size_limit)
            SMTP.__init__(
                self, handler, data_size_limit=data_size_limit,
                enable_SMTPUTF8=enable_SMTPUTF8, decode_data=decode_data, hostname=hostname,
                ident=ident, tls_context=tls_context, require_starttls=require_starttls,
                timeout=timeout, auth_required=auth_required,
                auth_require_tls=auth_require_tls,
                auth_exclude_mechanism=auth_exclude_mechanism, auth_callback=auth_callback,
                command_call_limit=command_call_limit, authenticator=authenticator,
                proxy_protocol_timeout=proxy_protocol_timeout, loop=loop)
        else:
            self._fast_init(handler, tables, hostname=hostname, ident=ident,
                            data_size_limit=data_size_limit, enable_SMTPUTF8=enable_SMTPUTF8,
                            decode_data=decode_data, tls_context=tls_context,
                            require_starttls=require_starttls, timeout=timeout,
                            auth_required=auth_required, auth_require_tls=auth_require_tls,
                            auth_exclude_mechanism=auth_exclude_mechanism,
                            auth_callback=auth_callback, authenticator=authenticator, loop=loop)
        # ours: the reader was sized by the class attribute; a DATA line may have the
        # RFC's 1,000 (+1) bytes
        self.line_length_limit = SMTP.line_length_limit
        self._handler = handler
        self._sessions = sessions
        self._global_limit: int = self.data_size_limit or 0
        self._peer = ""
        self._proxied_peer: tuple[str, int] | None = None
        """The client's address from a PROXY header, kept across STARTTLS."""
        self._active_at = 0.0  # loop time of the last input (see `_reset_timeout`)
        self._unsent: list[bytes] = []  # the first lines of a multi-line reply (`push`)

    def _fast_init(
        self, handler: handler_mod.Handler, tables: _Tables, *, hostname: str,
        ident: str | None, data_size_limit: int | None, enable_SMTPUTF8: bool,
        decode_data: bool, tls_context: ssl.SSLContext | None, require_starttls: bool,
        timeout: float, auth_required: bool, auth_require_tls: bool,
        auth_exclude_mechanism: Iterable[str] | None, auth_callback: Any, authenticator: Any,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """What ``SMTP.__init__`` sets (without call limits or PROXY, which only it
        validates), in its order, with the tables bound instead of found."""
        self.__ident__ = ident or aiosmtpd.smtp.__ident__
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected, loop=loop)
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        # aiosmtpd keeps these limits in a class-level dict that every new session clears
        # and every EHLO raises; one dict per session keeps sessions apart.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.hostname = hostname
        self.tls_context = tls_context
        if tls_context and tls_context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
            aiosmtpd.smtp.log.warning("tls_context.verify_mode not in {CERT_NONE, "
                                      "CERT_OPTIONAL}; this might cause client "
                                      "connection problems")
        elif tls_context and tls_context.check_hostname:
            aiosmtpd.smtp.log.warning("tls_context.check_hostname == True; "
                                      "this might cause client connection problems")
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        if authenticator is not None:
            self._authenticator = authenticator
            self._auth_callback = None
        else:
            self._auth_callback = auth_callback or aiosmtpd.smtp.login_always_fail
            self._authenticator = None
        self._auth_required = auth_required
        self._auth_methods = {
            name: aiosmtpd.smtp._AuthMechAttr(
                getattr(self if builtin else handler, attribute), builtin)
            for name, attribute, builtin in tables.auth}
        for mechanism in auth_exclude_mechanism or []:
            self._auth_methods.pop(mechanism, None)
        self._handle_hooks = {name: getattr(handler, attribute)
                              for name, attribute in tables.hooks}
        self._ehlo_hook_ver = tables.ehlo_version
        self._smtp_methods = {name: getattr(self, attribute)
                              for name, attribute in tables.commands}
        self._enforce_call_limit = False

    # -- lifecycle -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Runs in its own copy of the context, which aiosmtpd's session task inherits.
        peer = self._proxied_peer or transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(peer=self._peer)
        log.debug("ingress.session_opened", sessions=len(self._sessions))
        super().connection_made(transport)
        if self._proxied_peer is not None and self.session is not None:
            # STARTTLS starts a new session; aiosmtpd keeps the peername tuple (typed str)
            self.session.peer = self._proxied_peer  # type: ignore[assignment]
        if self.session is not None and self.session.ssl is None:
            tls = transport.get_extra_info("ssl_object")  # the implicit-TLS port
            if tls is not None:
                self.session.ssl = {"ssl_object": tls}

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._sessions.discard(self, self._handler_coroutine)
        structlog.contextvars.clear_contextvars()  # this callback's own context copy
        log.debug("ingress.session_closed", peer=self._peer, sessions=len(self._sessions))

    def data_received(self, data: bytes) -> None:
        """Any input is activity. aiosmtpd restarts its timeout only when a command
        arrives, so a DATA transfer longer than ``idle_timeout_s`` was cut while its bytes
        kept coming; like Postfix's smtpd_timeout, the limit is on silence."""
        self._active_at = self.loop.time()
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd re-arms a timer after every command; with one armed, noting the time
        is enough (a timer per command and per chunk of DATA was a tenth of the
        ingress's work): `_timeout_cb` re-arms it for the silence still allowed."""
        self._active_at = self.loop.time()
        handle = self._timeout_handle
        if duration is None and handle is not None and not handle.cancelled():
            return
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        silent = self.loop.time() - self._active_at
        if silent < self._timeout_duration:
            self._timeout_handle = self.loop.call_later(
                self._timeout_duration - silent, self._timeout_cb)
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def _handle_client(self) -> None:
        """aiosmtpd's session loop; a dropped connection ends it quietly, and nothing a
        client sends may end it with an unhandled exception."""
        try:
            if (self._handler.proxy_networks and proxyheader.trusted(
                    self._peer, self._handler.proxy_networks) and not await self._proxied()):
                return
            await super()._handle_client()
        except ConnectionError:
            log.debug("ingress.session_dropped")
        except Exception as exc:  # the edge of a session task: log, never crash the server
            log.error("ingress.session_failed", error=repr(exc), exc_info=exc)
            if self.transport is not None:
                self.transport.close()

    async def _proxied(self) -> bool:
        """Take the PROXY header of a trusted peer: the session's peer becomes the header's
        source. False (the connection closed) when there is no valid header."""
        header = await proxying.read(self._reader, self._handler.proxy_timeout_s)
        if isinstance(header, proxyheader.Invalid):
            log.warning("ingress.proxy_header_refused", reason=header.reason)
            if self.transport is not None:
                self.transport.close()
            return False
        if header.source is not None and self.session is not None:
            self._proxied_peer = (header.source, header.port)
            self.session.peer = self._proxied_peer  # type: ignore[assignment]
            log.debug("ingress.proxied", client_ip=header.source)
            self._peer = header.source
            structlog.contextvars.bind_contextvars(peer=self._peer)
        return True

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's loop turns any error into a reply and reads on. End of input is not
        such an error: it means aiosmtpd's ``eof_received`` cancelled this task and the
        cancellation got lost (Python 3.11's ``wait_for``, under nats-py's request, drops
        a cancel that lands as the PubAck does), so the loop would read EOF forever, busy,
        until the idle timeout. Close the session instead."""
        if isinstance(error, asyncio.IncompleteReadError):
            log.debug("ingress.session_ended_at_eof")
            if self.transport is not None:
                self.transport.close()
            return replies.CLOSING
        return str(await super().handle_exception(error))

    @property
    def idle(self) -> bool:
        """Not inside a transaction (no sender accepted yet)."""
        return self.envelope is None or self.envelope.mail_from is None

    def close_with(self, reply: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(reply.encode("ascii") + b"\r\n")
        transport.close()

    # -- aiosmtpd overrides ----------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, with the common form read by `paths` first. The
        stdlib's raises IndexError on a lone ``<`` (``MAIL FROM:<``): that is a
        malformed address (553), not an internal error (451, and an error log with a
        traceback for every such command)."""
        if not self.local_part_limit:
            common = paths.parse(arg)
            if common is not None:
                return common
        try:
            address, rest = super()._getaddr(arg)
        except IndexError:
            return None, None
        return address, rest

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading up to each ``.<CRLF>`` instead of line by line (see
        `dataphase`); the same checks, replies and handler hook."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            verdict, content = await read_data(self._reader, self.data_size_limit)
        except asyncio.IncompleteReadError:  # the client went away mid-DATA
            self._writer.close()
            return
        except asyncio.CancelledError:
            self._writer.close()
            raise
        if verdict is dataphase.Verdict.TOO_LONG:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            self._set_post_data_state()
            return
        if verdict is dataphase.Verdict.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    def _create_envelope(self) -> handler_mod.Transaction:
        return handler_mod.Transaction()

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self.data_size_limit = self._global_limit

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, bytes):  # only AUTH challenges
            await super().push(status)
            return
        known = replies.builtin(status)
        if known is not None:
            if known.reply == replies.TOO_BIG:
                known = replies.Builtin(
                    replies.too_big(self.data_size_limit or self._global_limit), known.stage)
            if known.stage:
                await self._report_builtin(known)
            status = known.reply
        final = status[3:4] != "-"
        line = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n"
        if not final:  # a multi-line reply (EHLO's) is written at once, with its last line
            self._unsent.append(line)
            return
        if self._unsent:
            line = b"".join(self._unsent) + line
            self._unsent.clear()
        self._writer.write(line)  # aiosmtpd's push, for the whole reply
        await self._writer.drain()
        if self._sessions.draining and self.idle:
            self.close_with(replies.SHUTTING_DOWN)

    async def _report_builtin(self, known: replies.Builtin) -> None:
        envelope = self.envelope
        admitted = envelope.admitted if isinstance(envelope, handler_mod.Transaction) else None
        mail_from = (envelope.mail_from if envelope is not None else None) or ""
        assert self.session is not None
        await self._handler.reject(
            admission.Refusal(reply=known.reply, stage=known.stage),
            ip=handler_mod.peer_ip(self.session), mail_from=mail_from, admitted=admitted,
        )
