"""A policy's allowed_senders: exact addresses and whole domains, domains case-insensitive."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.rules import senders


@pytest.mark.parametrize(
    ("address", "patterns", "allowed"),
    [
        ("anyone@anywhere.test", [], True),  # an empty list admits anyone
        ("app@example.com", ["app@example.com"], True),
        ("app@EXAMPLE.com", ["app@example.com"], True),  # domain case does not matter
        ("app@example.com", ["app@Example.COM"], True),
        ("App@example.com", ["app@example.com"], False),  # the local part is exact
        ("other@example.com", ["app@example.com"], False),
        ("x@example.org", ["@example.org"], True),
        ("x@EXAMPLE.ORG", ["*@example.org"], True),
        ("x@sub.example.org", ["@example.org"], False),  # no implicit subdomains
        ("x@example.org.evil.test", ["@example.org"], False),
        ("x@example.org", ["app@example.com", "@example.org"], True),
        ("x@example.org.", ["@example.org"], True),  # a trailing root dot is the same domain
        ("no-domain", ["@example.org"], False),
        ("", ["@example.org"], False),
        ("@example.org", ["@example.org"], False),  # no local part
        ("a@b@example.org", ["@example.org"], True),  # the domain follows the last @
    ],
)
def test_allowed(address: str, patterns: list[str], allowed: bool) -> None:
    """Each row: whether the patterns admit the address."""
    assert senders.allowed(address, patterns) is allowed


def test_first_refused_names_the_first_address_not_admitted() -> None:
    """With several From: addresses, the first one not admitted is the one to report."""
    patterns = ["@ok.test"]
    assert senders.first_refused(["a@ok.test", "b@bad.test", "c@bad.test"],
                                 patterns) == "b@bad.test"
    assert senders.first_refused(["a@ok.test", "b@OK.test"], patterns) is None
    assert senders.first_refused(["whatever"], []) is None


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_local = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789._+-", min_size=1,
                 max_size=20)
_domain = st.lists(_label, min_size=1, max_size=3).map(".".join)


@given(_local, _domain, st.sampled_from([str.upper, str.lower, str.title]))
def test_a_domain_pattern_admits_every_local_part_in_any_case(
    local: str, domain: str, case: Callable[[str], str]
) -> None:
    """``@domain`` and ``*@domain`` admit any local part at that domain, whatever its case."""
    address = f"{local}@{case(domain)}"
    assert senders.allowed(address, [f"@{domain}"])
    assert senders.allowed(address, [f"*@{domain}"])


@given(_local, _domain, _domain)
def test_a_pattern_never_admits_another_domain(local: str, domain: str, other: str) -> None:
    """Neither an exact nor a domain pattern admits an address at a different domain."""
    if domain.lower() == other.lower():
        return
    address = f"{local}@{other}"
    assert not senders.allowed(address, [f"@{domain}", f"{local}@{domain}"])
