"""`ingress.rules.auth`: when AUTH is offered, what a login means, and how failures from
one address slow down and lock out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.rules import auth
from schemas import snapshot

OPEN = snapshot.PolicyView(key="apps/open", upstream="mail/relay")
PLAIN_OK = snapshot.PolicyView(key="apps/lab", upstream="mail/relay", allow_plaintext_auth=True)
POLICIES = {p.key: p for p in (OPEN, PLAIN_OK)}


def login(policy: str, username: str, password: str) -> snapshot.ClientLogin:
    salt = snapshot.login_salt(policy, username)
    return snapshot.ClientLogin(policy=policy, salt=salt, iterations=1000,
                                verifier=snapshot.login_verifier(password, salt, 1000))


LOGINS = {"shop": login(OPEN.key, "shop", "pw-shop"), "lab": login(PLAIN_OK.key, "lab", "pw-lab")}


@pytest.mark.parametrize(("tls", "accept_any", "plaintext", "logins", "offered"), [
    (False, False, False, {}, False),
    (True, False, False, {}, False),
    (True, True, False, {}, True),
    (False, True, False, {}, False),
    (False, True, True, {}, True),
    (True, False, False, {"shop": LOGINS["shop"]}, True),
    (False, False, False, {"shop": LOGINS["shop"]}, False),
    (False, False, False, LOGINS, True),  # the lab policy allows plaintext logins
])
def test_when_auth_is_offered(tls: bool, accept_any: bool, plaintext: bool,
                              logins: dict[str, snapshot.ClientLogin], offered: bool) -> None:
    """AUTH is offered over TLS when any login means something, and before TLS only for
    accept-any with auth_plaintext or a policy allowing plaintext logins."""
    assert auth.offered(tls=tls, accept_any=accept_any, plaintext=plaintext, logins=logins,
                        policies=POLICIES) is offered


def check(username: str, password: str, *, tls: bool = True, accept_any: bool = False,
          plaintext: bool = False) -> auth.Accepted | auth.Refused:
    return auth.check(username, password, tls=tls, accept_any=accept_any, plaintext=plaintext,
                      logins=LOGINS, policies=POLICIES)


def test_a_client_login_gives_its_policy() -> None:
    """The right password of a policy's client login admits the client to that policy."""
    assert check("shop", "pw-shop") == auth.Accepted(username="shop", policy=OPEN.key)


def test_a_wrong_password_is_invalid_and_counts_even_with_accept_any() -> None:
    """A wrong password for a known login is 535 and counts, accept-any or not: a
    username that means a policy is never accepted with any password."""
    for accept_any in (False, True):
        assert check("shop", "guess", accept_any=accept_any) == auth.Refused(
            reply=auth.INVALID)


def test_accept_any_takes_unknown_users_without_a_policy() -> None:
    """With accept-any, an unknown login is accepted and stands for no policy (the
    address decides); without, it is 535."""
    assert check("whoever", "x", accept_any=True) == auth.Accepted(username="whoever",
                                                                   policy=None)
    assert check("whoever", "x") == auth.Refused(reply=auth.INVALID)


def test_before_tls_a_login_needs_its_policy_to_allow_it() -> None:
    """Before TLS a policy's login is refused with 538 (not counted) unless the policy
    allows plaintext logins; accept-any needs auth_plaintext."""
    assert check("shop", "pw-shop", tls=False) == auth.Refused(
        reply=auth.ENCRYPTION_REQUIRED, counts=False)
    assert check("lab", "pw-lab", tls=False) == auth.Accepted(username="lab",
                                                             policy=PLAIN_OK.key)
    assert check("x", "y", tls=False, accept_any=True) == auth.Refused(
        reply=auth.ENCRYPTION_REQUIRED, counts=False)
    assert check("x", "y", tls=False, accept_any=True, plaintext=True) == auth.Accepted(
        username="x", policy=None)


def test_failures_double_the_delay_up_to_the_cap_then_lock() -> None:
    """Each failure within the window doubles the answer's delay (capped); after
    LOCK_AFTER failures the address is locked until the window passes."""
    strike: auth.Strike | None = None
    delays = []
    for i in range(auth.LOCK_AFTER):
        assert not auth.locked(strike, now=100.0 + i)
        strike = auth.failed(strike, now=100.0 + i)
        delays.append(auth.delay(strike, 1.0))
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == auth.MAX_DELAY_S
    assert auth.locked(strike, now=110.0)
    assert not auth.locked(strike, now=109.0 + auth.WINDOW_S)
    assert auth.failed(strike, now=109.0 + auth.WINDOW_S).count == 1


@given(times=st.lists(st.floats(min_value=0, max_value=10_000), min_size=1, max_size=30),
       base=st.floats(min_value=0, max_value=5))
def test_delay_never_decreases_within_a_window_and_stays_capped(
        times: list[float], base: float) -> None:
    """Failures in time order: while the strike lives, the delay never goes down, and it
    is never above the cap."""
    strike: auth.Strike | None = None
    previous = 0.0
    for now in sorted(times):
        alive = auth.current(strike, now) is not None
        strike = auth.failed(strike, now)
        wait = auth.delay(strike, base)
        assert 0.0 <= wait <= auth.MAX_DELAY_S
        if alive:
            assert wait >= previous
        previous = wait
