"""AUTH PLAIN and LOGIN at the ingress: the shell around `ingress.rules.auth`.

aiosmtpd's own AUTH answers at once and checks credentials synchronously; the ingress
answers a failed login late (the slow-down) and checks a PBKDF2 verifier off the event
loop, so it takes the exchange over in the handler's ``AUTH`` hook: read the mechanism's
login and password (aiosmtpd's ``challenge_auth`` does the base64 round trips), ask the
rules, mark the session. A login is logged with its username and the client's address,
never with its password.
"""

from __future__ import annotations

import asyncio
import binascii
import time
from base64 import b64decode

import structlog
from aiosmtpd.smtp import SMTP, Session

from ingress.rules import auth
from runtime import policies
from runtime import settings as settings_mod

log = structlog.get_logger("ingress.authenticating")

MAX_STRIKES = 10_000
"""Client addresses whose failures are remembered; beyond, the oldest are forgotten, so
a spray from many addresses cannot grow the ingress's memory."""

NOT_OFFERED = "502 5.5.1 AUTH not available"


def tls_of(session: Session) -> bool:
    """Whether the session runs over TLS (after STARTTLS, or on the implicit-TLS port)."""
    return session.ssl is not None


class Authenticator:
    """The logins of one listener: what to offer, and each AUTH exchange."""

    def __init__(self, cfg: settings_mod.IngressSettings, holder: policies.SnapshotHolder
                 ) -> None:
        self._cfg = cfg
        self._holder = holder
        self._strikes: dict[str, auth.Strike] = {}

    def offered(self, tls: bool) -> bool:
        snap = self._holder.current
        return auth.offered(
            tls=tls, accept_any=self._cfg.auth_accept_any, plaintext=self._cfg.auth_plaintext,
            logins=snap.logins if snap is not None else {},
            policies=snap.policies if snap is not None else {},
        )

    async def exchange(self, server: SMTP, session: Session, args: list[str], ip: str
                       ) -> str | None:
        """One AUTH command: the reply to send, or None when one was sent already."""
        tls = tls_of(session)
        if not self.offered(tls):
            return auth.ENCRYPTION_REQUIRED if self.offered(True) else NOT_OFFERED
        now = time.monotonic()
        if auth.locked(self._strikes.get(ip), now):
            log.warning("ingress.login_locked", client_ip=ip)
            return auth.LOCKED
        read = await _credentials(server, args)
        if read is None:
            return None
        username, password = read
        snap = self._holder.current
        verdict = await asyncio.to_thread(
            auth.check, username, password, tls=tls, accept_any=self._cfg.auth_accept_any,
            plaintext=self._cfg.auth_plaintext,
            logins=snap.logins if snap is not None else {},
            policies=snap.policies if snap is not None else {},
        )
        del password
        if isinstance(verdict, auth.Accepted):
            self._strikes.pop(ip, None)
            session.authenticated = True
            session.auth_data = verdict  # type: ignore[assignment]  # aiosmtpd: Any
            log.info("ingress.login_accepted", username=username, client_ip=ip,
                     policy=verdict.policy or "", tls=tls)
            return auth.SUCCESS
        if not verdict.counts:
            log.info("ingress.login_refused", username=username, client_ip=ip,
                     reply=verdict.reply)
            return verdict.reply
        strike = auth.failed(self._strikes.pop(ip, None), time.monotonic())
        self._strikes[ip] = strike  # last in order: the most recent
        while len(self._strikes) > MAX_STRIKES:
            del self._strikes[next(iter(self._strikes))]
        wait_s = auth.delay(strike, self._cfg.auth_failure_delay_s)
        log.warning("ingress.login_failed", username=username, client_ip=ip,
                    failures=strike.count, delay_s=wait_s, reply=verdict.reply)
        await asyncio.sleep(wait_s)
        return verdict.reply


def login_of(session: Session) -> auth.Accepted | None:
    """The session's login, when it logged in (aiosmtpd keeps it as ``auth_data``)."""
    data = session.auth_data if session.authenticated else None
    return data if isinstance(data, auth.Accepted) else None


async def _credentials(server: SMTP, args: list[str]) -> tuple[str, str] | None:
    """Username and password of an AUTH PLAIN or LOGIN exchange, or None when the client
    aborted it or sent bad base64 (aiosmtpd's ``challenge_auth`` answered it then)."""
    mechanism = args[0].upper()
    initial: bytes | None = None
    if len(args) > 1:
        try:
            initial = b64decode(args[1], validate=True)
        except binascii.Error:
            await server.push("501 5.5.2 Can't decode base64")
            return None
    if mechanism == "PLAIN":
        blob = initial if initial is not None else await server.challenge_auth("")
        if not isinstance(blob, bytes):
            return None
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 Can't split auth value")
            return None
        login, password = parts[1], parts[2]
    else:  # LOGIN: aiosmtpd offers only PLAIN and LOGIN to the ingress
        name = (initial if initial is not None
                else await server.challenge_auth(server.AuthLoginUsernameChallenge))
        if not isinstance(name, bytes):
            return None
        secret = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if not isinstance(secret, bytes):
            return None
        login, password = name, secret
    return (login.decode("utf-8", "replace"), password.decode("utf-8", "replace"))
