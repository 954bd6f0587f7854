"""The fast path parser gives what aiosmtpd's ``_getaddr`` gives, for any input.

aiosmtpd's MAIL and RCPT replies are a function of ``_getaddr``'s ``(address, rest)``
alone, so the same pair means the same reply: here `paths.parse`, whenever it answers, is
compared with aiosmtpd's own ``SMTP._getaddr``, and the ingress's ``_getaddr`` (the fast
path, else aiosmtpd's) with aiosmtpd's for every string.
"""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingress import protocol
from ingress.rules import paths

ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~"
SPECIALS = "<>@.,:;\"[]()\\ \t\r\n\x00\x0b\x7fü\u00a0"


def aiosmtpd_getaddr(arg: str) -> tuple[str | None, str | None] | str:
    """aiosmtpd's own parser; its IndexError on a lone ``<`` is the ingress's 553. Any
    other error (the stdlib's parser has an AttributeError on ``a@[``) is the outcome."""
    try:
        return SMTP._getaddr(SMTP.__new__(SMTP), arg)  # type: ignore[no-any-return]
    except IndexError:
        return None, None
    except Exception as exc:
        return f"raises {type(exc).__name__}"


def ingress_getaddr(arg: str) -> tuple[str | None, str | None] | str:
    try:
        return protocol.IngressSMTP._getaddr(  # type: ignore[no-any-return]
            protocol.IngressSMTP.__new__(protocol.IngressSMTP), arg)
    except Exception as exc:
        return f"raises {type(exc).__name__}"


atoms = st.text(alphabet=ATEXT + ".", min_size=0, max_size=8)
junk = st.text(alphabet=ATEXT + SPECIALS + "=", max_size=12)
paths_like = st.builds(
    lambda lead, local, at, domain, close, gap, rest: f"{lead}{local}{at}{domain}{close}"
                                                      f"{gap}{rest}",
    st.sampled_from(["<", "<", "< ", "", "<<"]), atoms | junk, st.sampled_from(["@", "@", ""]),
    atoms | junk, st.sampled_from([">", ">", "", " >", ">>"]),
    st.sampled_from(["", " ", "  ", "\t", "(c)", " (c) "]),
    st.sampled_from(["", "SIZE=100", "BODY=8BITMIME SMTPUTF8", "x ", "=", "\u00a0x"]) | junk,
)


@pytest.mark.parametrize(("arg", "expected"), [
    ("<user@example.com>", ("user@example.com", "")),
    ("<user@example.com> SIZE=1024 BODY=8BITMIME", ("user@example.com",
                                                    "SIZE=1024 BODY=8BITMIME")),
    ("<first.last+tag@mail.example.co.uk>", ("first.last+tag@mail.example.co.uk", "")),
    ("<a@b>x", ("a@b", "x")),
])
def test_the_common_forms_take_the_fast_path(arg: str, expected: tuple[str, str]) -> None:
    """Plain paths, with or without parameters, are parsed without aiosmtpd, as it would."""
    assert paths.parse(arg) == expected == aiosmtpd_getaddr(arg)


@pytest.mark.parametrize("arg", [
    "<>", '<"a b"@example.com>', "<a@[192.0.2.1]>", "<@relay:a@b>", "<a@b", "a@b",
    "<a@b> (comment) SIZE=1", "<ü@b>", "<a..b@c>", "<a@b.>", "< a@b>", "",
])
def test_the_rare_forms_are_left_to_aiosmtpd(arg: str) -> None:
    """Null paths, quoted parts, literals, routes, comments and faults go to aiosmtpd."""
    assert paths.parse(arg) is None


@settings(max_examples=1500, deadline=None)
@given(st.one_of(paths_like, junk, st.text(max_size=20)))
@example("<a@b>\x0bSIZE=1")
@example("<a@b>\u00a0x")
@example("<a@b>\t\tSIZE=1\t")
def test_the_fast_path_agrees_with_aiosmtpd(arg: str) -> None:
    """Whenever the fast parser answers, aiosmtpd's parser gives the same address and
    rest; and the ingress's parser always gives what aiosmtpd's gives."""
    fast = paths.parse(arg)
    if fast is not None:
        assert fast == aiosmtpd_getaddr(arg)
    assert ingress_getaddr(arg) == aiosmtpd_getaddr(arg)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=ATEXT, min_size=1, max_size=6), min_size=1, max_size=3),
       st.lists(st.text(alphabet=ATEXT, min_size=1, max_size=6), min_size=1, max_size=3))
def test_every_dot_atom_path_takes_the_fast_path(local: list[str], domain: list[str]) -> None:
    """A path of dot-atoms (the form clients send) never falls back to the slow parser."""
    arg = f"<{'.'.join(local)}@{'.'.join(domain)}>"
    assert paths.parse(arg) == aiosmtpd_getaddr(arg)
    assert paths.parse(arg) is not None
