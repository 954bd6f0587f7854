"""The aiosmtpd handler: the shell that asks `admission` at MAIL, RCPT and DATA and, once a
message is admitted, names it, adds its trace headers and stores it (`ingress.storing`).

Every refusal is answered with the reply `admission` chose, logged once as
``ingress.mail_rejected``, emitted as a ``Rejected`` event and counted by `reasons`;
every success is logged as ``ingress.mail_accepted``, emitted as ``Accepted`` and
counted. Log context is cleared and bound per transaction (``peer``, then ``policy`` and
``mail_id``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from ingress import authenticating, storing
from ingress.rules import (
    admission,
    headers,
    mailid,
    proxyheader,
    reasons,
    replies,
    rewriting,
    routing,
)
from runtime import bus, eventing, metrics, policies
from runtime import settings as settings_mod
from schemas import events, mail
from schemas import snapshot as snapshot_mod

log = structlog.get_logger("ingress.handler")

EMIT_TIMEOUT_S = 1.0
"""Events are observability: a broker that cannot take one in a second loses it. Not one of
``conn.deadlines``: an event is a core publish (no PubAck) sent while the client waits for
its reply, so its budget is the client's, far below any bus call's deadline."""


class Transaction(Envelope):
    """aiosmtpd's envelope plus what MAIL admitted."""

    def __init__(self) -> None:
        super().__init__()
        self.admitted: admission.Admitted | None = None


def peer_ip(session: Session) -> str:
    """The client's address as text; aiosmtpd keeps the socket's peername tuple."""
    peer: Any = session.peer
    if isinstance(peer, tuple) and peer:
        host = str(peer[0])
    else:
        host = str(peer or "")
    address = routing.parse_ip(host)
    return str(address) if address is not None else host


def helo_name(session: Session) -> str:
    """The HELO/EHLO name as valid text: aiosmtpd keeps undecodable bytes as surrogates,
    which no JSON encoder takes, so they become U+FFFD instead of failing every mail of
    the session."""
    name = session.host_name or ""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _utf8(address: str) -> bool:
    """aiosmtpd decodes arguments with surrogateescape; refuse what is not UTF-8."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Handler:
    def __init__(
        self,
        conn: bus.Conn,
        cfg: settings_mod.IngressSettings,
        holder: policies.SnapshotHolder,
        hostname: str,
    ) -> None:
        self._conn = conn
        self._cfg = cfg
        self._holder = holder
        self._hostname = hostname
        self._index: routing.Index | None = None
        self._index_revision = -1
        self.auth = authenticating.Authenticator(cfg, holder)
        self.proxy_networks = proxyheader.networks(cfg.proxy_protocol_cidrs)
        """Peers whose connections start with a PROXY header (`ingress.proxying`)."""
        self.proxy_timeout_s = cfg.proxy_timeout_s

    def _current(self) -> tuple[snapshot_mod.PolicySnapshot | None, routing.Index | None]:
        """The snapshot and its route index: the holder's ROUTES copy when the snapshot's
        routes are in that bucket (no index until the copy caught up: ``451``), else the
        snapshot's own routes, indexed once per revision."""
        snap = self._holder.current
        if snap is None:
            return None, None
        mirror = self._holder.routes
        if snap.routes_bucket and mirror is not None and isinstance(mirror.sink, routing.Table):
            return snap, mirror.sink.index if mirror.loaded else None
        if self._index is None or self._holder.revision != self._index_revision:
            self._index = routing.build(snap.routes)
            self._index_revision = self._holder.revision
            if self._index.invalid:
                log.warning("ingress.routes_ignored", revision=self._index_revision,
                            networks=list(self._index.invalid))
        return snap, self._index

    # -- hooks ---------------------------------------------------------------------------

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Transaction, hostname: str,
        responses: list[str],
    ) -> list[str]:
        """aiosmtpd's EHLO reply, plus ``PIPELINING`` (RFC 2920): aiosmtpd reads commands
        from its stream one by one and answers them in order, so a client may send MAIL,
        the RCPTs and DATA in one write; without the keyword clients wait for each reply."""
        session.host_name = hostname  # the hook's job when it takes ``responses``
        if not self.auth.offered(authenticating.tls_of(session)):
            responses = [line for line in responses if not line.startswith("250-AUTH")]
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Transaction, args: list[str],
    ) -> str | None:
        """AUTH PLAIN and LOGIN (`ingress.authenticating`), instead of aiosmtpd's own."""
        return await self.auth.exchange(server, session, args, peer_ip(session))

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Transaction, address: str,
        mail_options: list[str],
    ) -> str:
        ip = peer_ip(session)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(peer=ip)
        if not _utf8(address):
            return replies.BAD_ADDRESS
        snap, index = self._current()
        login = authenticating.login_of(session)
        verdict = admission.at_mail(
            snap, index, ip, address,
            declared=admission.declared_size(mail_options),
            global_limit=self._cfg.max_message_size,
            tls=authenticating.tls_of(session),
            login=(login.username, login.policy) if login and login.policy else None,
        )
        if isinstance(verdict, admission.Refusal):
            await self.reject(verdict, ip=ip, mail_from=address)
            return verdict.reply
        structlog.contextvars.bind_contextvars(policy=verdict.policy.key)
        envelope.admitted = verdict
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        # aiosmtpd stops reading DATA past this; the server resets it after the transaction.
        server.data_size_limit = verdict.size_limit
        return replies.MAIL_OK

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Transaction, address: str,
        rcpt_options: list[str],
    ) -> str:
        if not _utf8(address):
            return replies.BAD_ADDRESS
        if address in envelope.rcpt_tos:
            return replies.RCPT_OK
        refusal = admission.at_rcpt(len(envelope.rcpt_tos), self._cfg.max_recipients)
        if refusal is not None:
            await self.reject(refusal, ip=peer_ip(session), mail_from=envelope.mail_from or "",
                              admitted=envelope.admitted)
            return refusal.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Transaction) -> str:
        ip = peer_ip(session)
        admitted = envelope.admitted
        data = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        if admitted is None:  # aiosmtpd only reaches DATA after our MAIL admitted it
            return replies.INTERNAL_ERROR
        refusal = admission.at_data(admitted, data)
        if refusal is not None:
            await self.reject(refusal, ip=ip, mail_from=mail_from, admitted=admitted)
            return refusal.reply
        now = datetime.now(UTC)
        mail_id = mailid.compute(mail_from, envelope.rcpt_tos, data)
        sender, body = mail_from, data  # what goes upstream; logs keep the client's
        if admitted.policy.rewrite_sender:
            rewritten = rewriting.rewrite(mail_from, data, admitted.policy.rewrite_sender)
            sender, body = rewritten.mail_from, rewritten.data
        structlog.contextvars.bind_contextvars(mail_id=mail_id)
        smtputf8 = bool(envelope.smtp_utf8)
        trace = headers.Trace(
            helo=helo_name(session), ip=ip, source=admitted.route.source,
            hostname=self._hostname, mail_id=mail_id, rcpt_to=list(envelope.rcpt_tos), at=now,
            protocol=headers.protocol(extended=session.extended_smtp, smtputf8=smtputf8,
                                      tls=session.ssl is not None),
        )
        message = headers.prefix(body, trace) + body
        policy = admitted.policy
        draft = mail.Envelope(
            id=mail_id, policy=policy.key, upstream=policy.upstream, mail_from=sender,
            rcpt_to=list(envelope.rcpt_tos), received_at=now, size=len(message),
            client_ip=ip, source=admitted.route.source, helo=helo_name(session),
            smtputf8=smtputf8,
        )
        try:
            ack = await storing.publish(
                self._conn, draft, message, inline_limit=self._cfg.inline_limit,
                timeout_s=self._cfg.publish_timeout_s, binary=self._cfg.binary_envelopes,
            )
        except storing.PublishFailed as exc:
            refusal = admission.Refusal(reply=replies.BROKER_DOWN, stage="data")
            await self.reject(refusal, ip=ip, mail_from=mail_from, admitted=admitted,
                              mail_id=mail_id, error=str(exc))
            return refusal.reply
        duplicate = bool(ack.duplicate)
        reply = replies.queued(mail_id)
        log.info("ingress.mail_accepted", upstream=policy.upstream, size=len(message),
                 rcpt_count=len(envelope.rcpt_tos), duplicate=duplicate, seq=ack.seq,
                 inline=len(message) <= self._cfg.inline_limit, smtp_code=250)
        metrics.current().accepted.labels(policy.key, policy.upstream).inc()
        await self._emit(events.Accepted(
            mail_id=mail_id, at=now, policy=policy.key, upstream=policy.upstream,
            mail_from=mail_from, rcpt_count=len(envelope.rcpt_tos), size=len(message),
            client_ip=ip, duplicate=duplicate,
        ))
        return reply

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's last resort for a bug in a hook: log it, let the client retry."""
        log.error("ingress.command_failed", error=repr(error), exc_info=error)
        return replies.INTERNAL_ERROR

    # -- outcomes ------------------------------------------------------------------------

    async def reject(
        self,
        refusal: admission.Refusal,
        *,
        ip: str,
        mail_from: str,
        admitted: admission.Admitted | None = None,
        mail_id: str = "",
        error: str | None = None,
    ) -> None:
        """Log and emit one refusal; the caller sends the reply."""
        view = refusal.policy or (admitted.policy if admitted is not None else None)
        policy = view.key if view is not None else ""
        upstream = view.upstream if view is not None else ""
        fields: dict[str, Any] = {}
        if error is not None:
            fields["error"] = error
        log.info("ingress.mail_rejected", smtp_code=refusal.code, reply=refusal.reply,
                 stage=refusal.stage, client_ip=ip, mail_from=mail_from, policy=policy,
                 **fields)
        metrics.current().rejected.labels(reasons.of(refusal.reply), policy).inc()
        await self._emit(events.Rejected(
            mail_id=mail_id, at=datetime.now(UTC), policy=policy, upstream=upstream,
            code=refusal.code, reply=refusal.reply, client_ip=ip, stage=refusal.stage,
        ))

    async def _emit(self, event: events.AnyEvent) -> None:
        try:
            async with asyncio.timeout(EMIT_TIMEOUT_S):
                await eventing.emit(self._conn, event)
        except TimeoutError:
            log.warning("ingress.event_dropped", kind=events.kind_of(event))
