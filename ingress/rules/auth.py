"""AUTH at the ingress: when it is offered, what a login means, how failures slow down.

Two kinds of login:

- a policy's **client login** (``clientCredentials``, a Secret's username and password):
  the client gets that policy whatever its address, for clients no pod address identifies
  (outside the cluster, behind SNAT, on hostNetwork). Usable before TLS only when the
  policy sets ``allowPlaintextAuth``.
- **accept-any** (``ingress.auth_accept_any``): any other login is accepted and means
  nothing; the client is still identified by its pod address. For apps that refuse to
  send without logging in.

Failed logins are slowed down per client address: the n-th failure within `WINDOW_S` is
answered after ``base_delay_s * 2**(n-1)`` seconds, at most `MAX_DELAY_S`, and from
`LOCK_AFTER` failures on, further attempts are refused at once until the window passes.
Pure: the caller passes ``now`` and keeps the strikes.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

import msgspec

from schemas import snapshot

WINDOW_S = 900.0
"""A client's failures are forgotten this long after its last one."""
MAX_DELAY_S = 30.0
"""The longest a failed login waits for its answer (below clients' AUTH timeouts)."""
LOCK_AFTER = 10
"""Failures within the window after which a client's logins are refused unchecked."""

SUCCESS = "235 2.7.0 Authentication successful"
INVALID = "535 5.7.8 Authentication credentials invalid"
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
LOCKED = "454 4.7.0 Too many failed logins from this address, try again later"
ALREADY = "503 5.5.1 Already authenticated"


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    policy: str | None
    """The policy the login stands for; None for an accept-any login (the address
    decides)."""


class Refused(msgspec.Struct, frozen=True, kw_only=True):
    reply: str
    counts: bool = True
    """A failure that counts towards the slow-down (a wrong password, an unknown user)."""


class Strike(msgspec.Struct, frozen=True, kw_only=True):
    """A client address's recent failures."""

    count: int
    last_at: float


def offered(
    *, tls: bool, accept_any: bool, plaintext: bool,
    logins: Mapping[str, snapshot.ClientLogin], policies: Mapping[str, snapshot.PolicyView],
) -> bool:
    """Whether EHLO advertises AUTH on this session."""
    if tls:
        return accept_any or bool(logins)
    if accept_any and plaintext:
        return True
    return any(_plain_ok(login, policies) for login in logins.values())


def _plain_ok(login: snapshot.ClientLogin, policies: Mapping[str, snapshot.PolicyView]
              ) -> bool:
    policy = policies.get(login.policy)
    return policy is not None and policy.allow_plaintext_auth


def check(
    username: str, password: str, *, tls: bool, accept_any: bool, plaintext: bool,
    logins: Mapping[str, snapshot.ClientLogin], policies: Mapping[str, snapshot.PolicyView],
) -> Accepted | Refused:
    """What one login means. CPU-bound (the PBKDF2 verifier): run it off the loop."""
    login = logins.get(username)
    if login is None or login.policy not in policies:
        if accept_any:
            if not (tls or plaintext):
                return Refused(reply=ENCRYPTION_REQUIRED, counts=False)
            return Accepted(username=username, policy=None)
        return Refused(reply=INVALID)
    if not tls and not _plain_ok(login, policies):
        return Refused(reply=ENCRYPTION_REQUIRED, counts=False)
    expected = snapshot.login_verifier(password, login.salt, login.iterations)
    if not hmac.compare_digest(expected, login.verifier):
        return Refused(reply=INVALID)
    return Accepted(username=username, policy=login.policy)


def current(strike: Strike | None, now: float) -> Strike | None:
    """The strike still in force at ``now`` (None once the window passed)."""
    if strike is None or now - strike.last_at >= WINDOW_S:
        return None
    return strike


def locked(strike: Strike | None, now: float) -> bool:
    """Whether this address's logins are refused unchecked."""
    live = current(strike, now)
    return live is not None and live.count >= LOCK_AFTER


def failed(strike: Strike | None, now: float) -> Strike:
    """The strike after one more failure at ``now``."""
    live = current(strike, now)
    return Strike(count=1 if live is None else live.count + 1, last_at=now)


def delay(strike: Strike, base_delay_s: float) -> float:
    """How long the answer to the failure that made ``strike`` waits."""
    if base_delay_s <= 0:
        return 0.0
    return float(min(base_delay_s * 2.0 ** min(strike.count - 1, 16), MAX_DELAY_S))
