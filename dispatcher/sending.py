"""One SMTP session with an upstream, and every way it can fail turned into data.

This is the dispatcher's only SMTP client code (aiosmtplib underneath). `connect` opens
a session the way the upstream's ``SMTPServer`` says (``plain``, ``ssl`` = implicit TLS,
``starttls`` = an upgrade that must happen), greets it and logs in; `send` runs one mail
transaction on an open session; `close` says QUIT. Both `connect` and `send` return an
`outcome.Outcome` rather than raising: every aiosmtplib, OSError, TimeoutError and ssl
error becomes data in `failed`, and nowhere else, so the worker's decisions only ever see
data (kopf's ``Outcome``).

Why not aiosmtplib's ``sendmail``: it raises when every recipient is refused and blurs
which reply belongs to which stage. The lower-level ``mail``/``rcpt``/``data`` calls let
each refused recipient keep its own code while the accepted ones get the DATA reply.

To an upstream that offers PIPELINING (RFC 2920) a transaction goes out in one write
(MAIL, every RCPT, DATA) and its replies are read in order (`_pipelined`): a mail to
one recipient takes two round trips to the upstream instead of four, which is what bounds
a connection's mail per second to a distant provider. The results are the same as one
command at a time (every test of tests/integration/test_sending.py runs both ways).

A session stays reusable after a refusal (it is RSET); any failure that leaves the
protocol in doubt (a timeout, a drop) closes it. The pool (`pool`) owns the sessions.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import aiosmtplib
import aiosmtplib.protocol

from dispatcher import scram
from dispatcher.rules.outcome import Failure, Outcome, RcptResult
from runtime import settings
from schemas import snapshot

Stage = Literal["connect", "greet", "tls", "auth", "ready", "mail", "rcpt", "data", "done"]
"""How far a session got: the stage a failure happened in decides its class."""

AUTH_TYPES = ("PLAIN", "LOGIN", "CRAM-MD5", *scram.MECHANISMS)
"""The ``authType`` values podpost can log in with (aiosmtplib's, and SCRAM by `scram`)."""

QUIT_TIMEOUT_S = 5.0
"""Upper bound for a polite QUIT; closing never waits longer on an upstream."""

_T = TypeVar("_T")


class Refused(Exception):
    """A session podpost refuses to continue itself (STARTTLS not offered, an AUTH
    mechanism it cannot speak), with the failure class it stands for."""

    def __init__(self, failure: Failure, reply: str, code: int | None = None) -> None:
        super().__init__(reply)
        self.failure: Failure = failure
        self.reply = reply
        self.code = code


_SMTP_ERRORS = (Refused, aiosmtplib.SMTPException, OSError, TimeoutError, ValueError)
"""What an SMTP exchange may raise: ssl.SSLError is an OSError; ValueError is aiosmtplib's
answer to an address it cannot put on a command line (or encode without SMTPUTF8)."""


@dataclass(eq=False)
class Connection:
    """An open, greeted, secured and logged-in session with one upstream."""

    smtp: aiosmtplib.SMTP
    upstream: snapshot.UpstreamView
    stage: Stage = "connect"
    """How far the session, or its last transaction, got."""
    transactions: int = 0
    """Mail transactions completed on this session (for the log and the tests)."""
    idle_since: float = 0.0
    """Loop time when it was last put back into the pool."""

    @property
    def alive(self) -> bool:
        """False once either side closed it (aiosmtplib notices an upstream's close)."""
        return self.smtp.is_connected


def tls_context(
    cfg: settings.DispatcherSettings, *, cadata: str | None = None
) -> ssl.SSLContext:
    """The client TLS context: the system's CAs plus ``cfg.tls_ca_file`` plus ``cadata``
    (an upstream's own ``tlsCA`` bundle, PEM); no verification at all only when
    ``cfg.tls_verify`` is off. Reads files, so build it once (the pool does, per bundle)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if cfg.tls_ca_file:
        context.load_verify_locations(cafile=cfg.tls_ca_file)
    if cadata:
        context.load_verify_locations(cadata=cadata)
    if not cfg.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def failed(exc: BaseException, stage: Stage) -> Outcome:
    """The one place where an exception becomes an `Outcome` (without recipients)."""
    if isinstance(exc, Refused):
        return Outcome(failure=exc.failure, code=exc.code, reply=exc.reply)
    code: int | None = None
    reply = f"{stage}: {type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code, reply = exc.code, exc.message
    failure: Failure
    if _is_ssl_error(exc):
        failure = "tls"
    elif isinstance(exc, TimeoutError):  # SMTPTimeoutError, asyncio.timeout's, connect's
        failure = "timeout"
    elif isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        failure = "auth"
    elif stage == "tls":  # STARTTLS refused (454) or the upgrade dropped
        failure = "tls"
    elif isinstance(exc, aiosmtplib.SMTPConnectResponseError):  # a 421/554 greeting
        failure = "connect"
    elif code is None and isinstance(exc, OSError):  # refused, reset, dropped
        failure = "connect"
    elif stage == "auth":
        failure = "auth"
    else:
        failure = "protocol"
    return Outcome(failure=failure, code=code, reply=reply)


def _is_ssl_error(exc: BaseException) -> bool:
    """aiosmtplib wraps a failed implicit-TLS handshake in SMTPConnectError: look at the
    causes too (a few levels; chains are short)."""
    cause: BaseException | None = exc
    for _ in range(5):
        if cause is None:
            return False
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def mail_params(
    extensions: Mapping[str, str], mail_from: str, rcpts: Sequence[str], data: bytes
) -> tuple[list[str], str] | Outcome:
    """MAIL FROM parameters and the address encoding for this mail on a server offering
    ``extensions`` (aiosmtplib's lower-cased EHLO keywords), or why it cannot be sent.

    SIZE whenever offered, so a server refuses an oversized mail before the body is sent;
    BODY=8BITMIME when the body has 8-bit bytes and it is offered; SMTPUTF8 when offered
    and the addresses or headers need it. UTF-8 addresses without SMTPUTF8 cannot be
    sent at all: refused like Postfix does (553 5.6.7). An 8-bit body to a server without
    8BITMIME is sent as it is, as most relays accept it."""
    params: list[str] = []
    if "size" in extensions:
        params.append(f"SIZE={len(data)}")
    if not data.isascii() and "8bitmime" in extensions:
        params.append("BODY=8BITMIME")
    utf8_addresses = not all(address.isascii() for address in (mail_from, *rcpts))
    if "smtputf8" in extensions and (utf8_addresses or not _headers(data).isascii()):
        params.append("SMTPUTF8")
        return params, "utf-8"
    if utf8_addresses:
        return Outcome(
            failure="protocol", code=553,
            reply="5.6.7 SMTPUTF8 is required by the addresses but not offered by the upstream",
        )
    return params, "ascii"


def _headers(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    return data if end < 0 else data[:end]


def dead_before_data(conn: Connection, result: Outcome) -> bool:
    """The session died under us before DATA, so the upstream has nothing of this mail:
    trying again on a new session cannot duplicate it. (A pooled session the upstream
    closed while idle looks like this.)"""
    lost = result.failure == "connect" or result.code == 421
    return lost and not conn.alive and conn.stage in ("mail", "rcpt")


async def _within(aw: Awaitable[_T], timeout_s: float) -> _T:
    """Every network await gets a deadline, on top of aiosmtplib's own per-read one."""
    async with asyncio.timeout(timeout_s):
        return await aw


async def connect(
    upstream: snapshot.UpstreamView,
    creds: snapshot.Credentials | None,
    *,
    tls: ssl.SSLContext,
    timeout_s: float,
    local_hostname: str,
) -> Connection | Outcome:
    """Open a session: connect (TLS first for ``ssl``), EHLO, STARTTLS for ``starttls``
    (refused when the server does not offer it), then AUTH with ``creds`` if given."""
    mechanism = upstream.auth_type.upper()
    if creds is not None and mechanism not in AUTH_TYPES:
        return Outcome(
            failure="auth",
            reply=f"authType {upstream.auth_type} is not supported (unknown mechanism); "
                  f"use one of {', '.join(AUTH_TYPES)}",
        )
    smtp = aiosmtplib.SMTP(
        hostname=upstream.host, port=upstream.port, local_hostname=local_hostname,
        timeout=timeout_s, use_tls=upstream.connect == "ssl", start_tls=False, tls_context=tls,
    )
    conn = Connection(smtp=smtp, upstream=upstream)
    try:
        await _within(smtp.connect(), timeout_s)
        conn.stage = "greet"
        await _within(smtp.ehlo(timeout=timeout_s), timeout_s)
        if upstream.connect == "starttls":
            conn.stage = "tls"
            if not smtp.supports_extension("starttls"):
                raise Refused("tls", "upstream does not offer STARTTLS; not sending in clear")
            await _within(smtp.starttls(server_hostname=upstream.host, timeout=timeout_s),
                          timeout_s)
            conn.stage = "greet"
            await _within(smtp.ehlo(timeout=timeout_s), timeout_s)
        if creds is not None:
            conn.stage = "auth"
            await _within(_login(smtp, mechanism, creds, timeout_s), timeout_s)
    except _SMTP_ERRORS as exc:
        smtp.close()
        return failed(exc, conn.stage)
    conn.stage = "ready"
    return conn


async def _login(
    smtp: aiosmtplib.SMTP, mechanism: str, creds: snapshot.Credentials, timeout_s: float
) -> aiosmtplib.SMTPResponse:
    if mechanism == "LOGIN":
        return await smtp.auth_login(creds.username, creds.password, timeout=timeout_s)
    if mechanism in scram.MECHANISMS:
        return await scram.login(smtp, mechanism, creds.username, creds.password,
                                 timeout_s=timeout_s)
    if mechanism == "CRAM-MD5":
        return await smtp.auth_crammd5(creds.username, creds.password, timeout=timeout_s)
    return await smtp.auth_plain(creds.username, creds.password, timeout=timeout_s)


async def send(
    conn: Connection, mail_from: str, rcpts: Sequence[str], data: bytes, *, timeout_s: float
) -> Outcome:
    """One transaction: MAIL FROM, RCPT TO each recipient (a refusal is recorded, not
    raised), DATA if anyone was accepted, RSET after a refusal. Each recipient's result
    is its RCPT refusal or, if accepted, the reply to DATA; in the order given."""
    smtp = conn.smtp
    conn.stage = "mail"
    if not rcpts:
        return Outcome()
    params = mail_params(smtp.esmtp_extensions, mail_from, rcpts, data)
    if isinstance(params, Outcome):
        return params
    options, encoding = params
    exchange = _pipelined if _pipelines(smtp, mail_from, rcpts, data) else _one_by_one
    try:
        results = await exchange(conn, mail_from, rcpts, data, options, encoding, timeout_s)
    except _SMTP_ERRORS as exc:
        smtp.close()  # the exchange is in doubt: never reuse it
        return failed(exc, conn.stage)
    if isinstance(results, Outcome):  # the sender was refused
        return results
    conn.stage = "done"
    conn.transactions += 1
    return Outcome(rcpts=[results[rcpt] for rcpt in rcpts])


_Results = dict[str, RcptResult] | Outcome
"""What one exchange gives `send`: each recipient's result, or the sender's refusal."""


async def _one_by_one(
    conn: Connection, mail_from: str, rcpts: Sequence[str], data: bytes,
    options: list[str], encoding: str, timeout_s: float,
) -> _Results:
    """MAIL, each RCPT and DATA, each awaiting its reply (aiosmtplib's commands)."""
    smtp = conn.smtp
    results: dict[str, RcptResult] = {}
    accepted: list[str] = []
    try:
        await _within(smtp.mail(mail_from, options=options, encoding=encoding,
                                timeout=timeout_s), timeout_s)
    except aiosmtplib.SMTPSenderRefused as exc:
        await _reset(conn, timeout_s)
        return Outcome(failure="protocol", code=exc.code, reply=exc.message)
    conn.stage = "rcpt"
    for rcpt in rcpts:
        try:
            await _within(smtp.rcpt(rcpt, encoding=encoding, timeout=timeout_s), timeout_s)
        except aiosmtplib.SMTPRecipientRefused as exc:
            results[rcpt] = RcptResult(rcpt=rcpt, code=exc.code, reply=exc.message)
        else:
            accepted.append(rcpt)
    if accepted:
        conn.stage = "data"
        try:
            reply = await _within(_data(smtp, data, timeout_s), timeout_s)
            code, message = reply.code, reply.message
        except aiosmtplib.SMTPDataError as exc:
            code, message = exc.code, exc.message
            await _reset(conn, timeout_s)
        for rcpt in accepted:
            results[rcpt] = RcptResult(rcpt=rcpt, code=code, reply=message)
    else:
        await _reset(conn, timeout_s)
    return results


_ACCEPTED = (250, 251)
"""RCPT replies that accept the recipient (aiosmtplib's completed and will_forward)."""


def _drivable(smtp: aiosmtplib.SMTP, data: bytes, state: tuple[str, ...]
              ) -> aiosmtplib.protocol.SMTPProtocol | None:
    """aiosmtplib's own protocol, when podpost may drive it directly: the message needs
    no preparation (`ready_as_is`), the protocol has the private ``state`` the caller
    uses (tests/unit/test_sending_data.py) and it is connected; else None."""
    protocol = smtp.protocol
    if (type(protocol) is not aiosmtplib.protocol.SMTPProtocol or not ready_as_is(data)
            or not all(hasattr(protocol, name) for name in state)
            or protocol._command_lock is None):
        return None
    return protocol


def _pipelines(smtp: aiosmtplib.SMTP, mail_from: str, rcpts: Sequence[str], data: bytes
               ) -> bool:
    """Whether this transaction goes out pipelined (RFC 2920): the upstream offers
    PIPELINING, its protocol can be driven (`_drivable`) and every address can stand
    between angle brackets as it is."""
    return ("pipelining" in smtp.esmtp_extensions
            and _drivable(smtp, data, _PIPELINE_STATE) is not None
            and not any(c in address for address in (mail_from, *rcpts) for c in "<>\r\n"))


def _path(address: str, encoding: str) -> bytes:
    return b"<" + address.encode(encoding) + b">"


async def _reply(protocol: aiosmtplib.protocol.SMTPProtocol, timeout_s: float
                 ) -> aiosmtplib.SMTPResponse:
    """The next reply of a pipelined exchange, in order: one aiosmtplib has parsed
    already, else one still in its buffer (a server may send several replies in one
    packet, and aiosmtplib parses one per packet), else the next to arrive."""
    waiter = protocol._response_waiter
    if waiter is not None and not waiter.done():
        protocol._response_pending = True
        buffered = protocol._read_response_from_buffer()
        if buffered is not None:
            return buffered
    return await protocol.read_response(timeout=timeout_s)


async def _pipelined(
    conn: Connection, mail_from: str, rcpts: Sequence[str], data: bytes,
    options: list[str], encoding: str, timeout_s: float,
) -> _Results:
    """MAIL, every RCPT and DATA in one write, then the replies in order, then the
    message: one round trip to the upstream instead of two plus one per recipient, with
    the same results as `_one_by_one` for every reply; a 421 ends the session."""
    protocol = _drivable(conn.smtp, data, _PIPELINE_STATE)
    assert protocol is not None and protocol._command_lock is not None  # `_pipelines`
    option_bytes = b"".join(b" " + option.encode("ascii") for option in options)
    commands = [b"MAIL FROM:" + _path(mail_from, encoding) + option_bytes + b"\r\n"]
    commands += [b"RCPT TO:" + _path(rcpt, encoding) + b"\r\n" for rcpt in rcpts]
    commands.append(b"DATA\r\n")
    results: dict[str, RcptResult] = {}
    accepted: list[str] = []
    async with protocol._command_lock:
        async with asyncio.timeout(timeout_s):
            protocol._response_pending = True
            protocol.write(b"".join(commands))
            sender = await _reply(protocol, timeout_s)
            _unless_closing(sender)
            conn.stage = "rcpt"
            for rcpt in rcpts:
                reply = await _reply(protocol, timeout_s)
                _unless_closing(reply)
                if reply.code in _ACCEPTED and sender.code == 250:
                    accepted.append(rcpt)
                else:
                    results[rcpt] = RcptResult(rcpt=rcpt, code=reply.code,
                                               reply=reply.message)
            conn.stage = "data"
            start = await _reply(protocol, timeout_s)
            _unless_closing(start)
        final: aiosmtplib.SMTPResponse | None = None
        if start.code == aiosmtplib.SMTPStatus.start_input:
            # with nobody accepted, an empty message ends the DATA the server began
            async with asyncio.timeout(timeout_s):
                protocol._response_pending = True
                protocol.write(data + b".\r\n" if accepted else b".\r\n")
                final = await _reply(protocol, timeout_s)
                _unless_closing(final)
    if sender.code != 250:
        await _reset(conn, timeout_s)
        return Outcome(failure="protocol", code=sender.code, reply=sender.message)
    if accepted:
        outcome = final if final is not None else start
        for rcpt in accepted:
            results[rcpt] = RcptResult(rcpt=rcpt, code=outcome.code, reply=outcome.message)
    if not accepted or final is None or final.code != aiosmtplib.SMTPStatus.completed:
        await _reset(conn, timeout_s)
    return results


def _unless_closing(reply: aiosmtplib.SMTPResponse) -> None:
    """A 421 ends the session, as aiosmtplib's own commands treat it."""
    if reply.code == aiosmtplib.SMTPStatus.domain_unavailable:
        raise aiosmtplib.SMTPResponseException(reply.code, reply.message)


def ready_as_is(data: bytes) -> bool:
    """The message needs none of aiosmtplib's DATA preparation: every line ends in CRLF (no
    lone CR or LF), none starts with a dot, and it ends with CRLF, as the ingress stores
    mail. Then aiosmtplib's two passes (line endings, dot-stuffing) would return it
    unchanged."""
    return (data.endswith(b"\r\n") and not data.startswith(b".") and b"\n." not in data
            and data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"))


_PROTOCOL_STATE = ("_command_lock", "_response_pending")
"""aiosmtplib 5's SMTPProtocol state `_data` uses (tests/unit/test_sending_data.py)."""
_PIPELINE_STATE = (*_PROTOCOL_STATE, "_response_waiter", "_read_response_from_buffer")
"""... and what `_pipelined` uses besides."""


async def _data(smtp: aiosmtplib.SMTP, data: bytes, timeout_s: float
                ) -> aiosmtplib.SMTPResponse:
    """aiosmtplib's DATA, without its preparation when the message needs none
    (`ready_as_is`): two regular expressions over every message are a fifth of the
    dispatcher's CPU at 10 KiB. Otherwise, and on any other aiosmtplib, its own ``data``."""
    protocol = _drivable(smtp, data, _PROTOCOL_STATE)
    if protocol is None or protocol._command_lock is None:
        return await smtp.data(data, timeout=timeout_s)
    try:
        async with protocol._command_lock:  # as SMTPProtocol.execute_data_command does
            protocol._response_pending = True
            protocol.write(b"DATA\r\n")
            start = await protocol.read_response(timeout=timeout_s)
            if start.code != aiosmtplib.SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            protocol._response_pending = True
            protocol.write(data + b".\r\n")
            reply = await protocol.read_response(timeout=timeout_s)
            if reply.code != aiosmtplib.SMTPStatus.completed:
                raise aiosmtplib.SMTPDataError(reply.code, reply.message)
            return reply
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        smtp.close()
        raise


async def _reset(conn: Connection, timeout_s: float) -> None:
    """RSET after a refusal so the session can carry the next mail; a session that cannot
    even do that is closed (the pool then drops it)."""
    if not conn.alive:
        return
    try:
        await _within(conn.smtp.rset(timeout=timeout_s), timeout_s)
    except _SMTP_ERRORS:
        conn.smtp.close()


async def close(conn: Connection, *, timeout_s: float = QUIT_TIMEOUT_S) -> None:
    """QUIT politely if the session is still up (bounded), then close the transport."""
    if conn.alive:
        try:
            await _within(conn.smtp.quit(timeout=timeout_s), timeout_s)
        except _SMTP_ERRORS:
            pass  # it is being closed anyway
    conn.smtp.close()
