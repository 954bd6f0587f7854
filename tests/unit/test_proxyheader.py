"""`ingress.rules.proxyheader`: PROXY protocol v1 and v2 headers, whole, partial and
broken, and which peers are trusted to send one."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.rules import proxyheader as ph


def v2(source: str, port: int, *, command: int = 1, tlv: bytes = b"") -> bytes:
    """A v2 PROXY header for a TCP connection from ``source``:``port``."""
    src = ipaddress.ip_address(source)
    if src.version == 4:
        family, dst = 0x11, ipaddress.IPv4Address("10.0.0.1")
    else:
        family, dst = 0x21, ipaddress.IPv6Address("fd00::1")
    block = src.packed + dst.packed + port.to_bytes(2, "big") + (25).to_bytes(2, "big") + tlv
    return (ph.V2_SIGNATURE + bytes([0x20 | command, family])
            + len(block).to_bytes(2, "big") + block)


def v1(source: str, port: int) -> bytes:
    family = "TCP4" if ipaddress.ip_address(source).version == 4 else "TCP6"
    dst = "10.0.0.1" if family == "TCP4" else "fd00::1"
    return f"PROXY {family} {source} {dst} {port} 25\r\n".encode()


@pytest.mark.parametrize(("data", "expected"), [
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\nEHLO x\r\n",
     ph.Header(length=40, source="192.0.2.7", port=40000)),
    (b"PROXY TCP6 2001:db8::7 fd00::1 1 25\r\n",
     ph.Header(length=37, source="2001:db8::7", port=1)),
    (b"PROXY UNKNOWN\r\n", ph.Header(length=15)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ph.Header(length=35)),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 40000", ph.Incomplete(need=0)),
    (b"PROXY", ph.Incomplete(need=7)),
    (b"PROXY TCP4 2001:db8::7 10.0.0.1 1 25\r\n",
     ph.Invalid(reason="v1 header's addresses do not match its family")),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 99999 25\r\n", ph.Invalid(reason="v1 header has a bad port")),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 025 25\r\n", ph.Invalid(reason="v1 header has a bad port")),
    (b"PROXY TCP4 300.0.2.7 10.0.0.1 1 25\r\n", ph.Invalid(reason="v1 header has a bad address")),
    (b"PROXY UDP4 192.0.2.7 10.0.0.1 1 25\r\n",
     ph.Invalid(reason="v1 header needs PROXY TCP4|TCP6 src dst sport dport")),
    (b"PROXY " + b"A" * 120, ph.Invalid(reason="v1 line too long")),
    (b"EHLO client.test\r\n", ph.Invalid(reason="no PROXY protocol header")),
])
def test_v1_and_junk(data: bytes, expected: object) -> None:
    """v1 lines give the source address and the header length; partial lines ask for
    the rest of the line; anything else is no header."""
    assert ph.parse(data) == expected


def test_v2_local_and_non_tcp_keep_the_peer_address() -> None:
    """A v2 LOCAL header (a balancer's health check) or a non-TCP family carries no
    client address."""
    local = v2("192.0.2.7", 1, command=0)
    assert ph.parse(local) == ph.Header(length=len(local))
    unspec = ph.V2_SIGNATURE + bytes([0x21, 0x00, 0, 0])
    assert ph.parse(unspec) == ph.Header(length=16)


def test_v2_bad_version_and_short_address_block_are_invalid() -> None:
    """A v2 header with another version, or an address block shorter than its family's,
    is refused."""
    good = v2("192.0.2.7", 1)
    assert isinstance(ph.parse(good[:12] + bytes([0x11]) + good[13:]), ph.Invalid)
    short = ph.V2_SIGNATURE + bytes([0x21, 0x11, 0, 4]) + b"\x01\x02\x03\x04"
    assert ph.parse(short) == ph.Invalid(reason="v2 header's address block is too short")


ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
PORTS = st.integers(min_value=0, max_value=65535)


@given(source=ADDRESSES, port=PORTS, tlv=st.binary(max_size=40), tail=st.binary(max_size=30))
def test_v2_round_trip(source: str, port: int, tlv: bytes, tail: bytes) -> None:
    """Any v2 header (with TLVs after the addresses) gives back its source and port and
    its exact length, whatever follows it."""
    header = v2(source, port, tlv=tlv)
    assert ph.parse(header + tail) == ph.Header(length=len(header), source=source, port=port)


@given(source=ADDRESSES, port=PORTS, cut=st.integers(min_value=0, max_value=200),
       version=st.sampled_from([1, 2]))
def test_a_cut_header_asks_for_more(source: str, port: int, cut: int, version: int) -> None:
    """Every proper prefix of a valid header is Incomplete, never a header or invalid, and
    asks for no more bytes than the header still has."""
    header = v1(source, port) if version == 1 else v2(source, port)
    prefix = header[: min(cut, len(header) - 1)]
    verdict = ph.parse(prefix)
    assert isinstance(verdict, ph.Incomplete)
    assert verdict.need <= len(header) - len(prefix)


@given(st.binary(max_size=300))
def test_any_bytes_give_a_verdict(data: bytes) -> None:
    """Arbitrary bytes never raise; a header found is never longer than the input."""
    verdict = ph.parse(data)
    if isinstance(verdict, ph.Header):
        assert verdict.length <= len(data)


@pytest.mark.parametrize(("peer", "trusted"), [
    ("10.1.2.3", True), ("10.2.0.1", False), ("::ffff:10.1.2.3", True),
    ("fd00::5", True), ("fd01::5", False), ("not-an-ip", False),
])
def test_trusted_networks(peer: str, trusted: bool) -> None:
    """Only peers inside a configured network (an IPv4-mapped address counts as its IPv4
    one) are trusted to send a header."""
    nets = ph.networks(["10.1.0.0/16", "fd00::/16"])
    assert ph.trusted(peer, nets) is trusted


def test_a_bad_network_names_the_setting() -> None:
    """A malformed CIDR is an error naming the variable."""
    with pytest.raises(ValueError, match="PODPOST_INGRESS__PROXY_PROTOCOL_CIDRS"):
        ph.networks(["10.1.0.0/33"])
