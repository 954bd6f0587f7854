"""Client address -> route: longest-prefix match over the snapshot's routes."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.rules import routing
from schemas.snapshot import Route


def _route(network: str, policy: str | None = None) -> Route:
    return Route(network=network, policy=policy or f"ns/{network}", source=f"static:ns/{network}")


ROUTES = [
    _route("10.0.0.0/8"),
    _route("10.1.0.0/16"),
    _route("10.1.2.0/24"),
    _route("10.1.2.3/32"),
    _route("10.9.9.9"),
    _route("0.0.0.0/0"),
    _route("2001:db8::/32"),
    _route("2001:db8:1::/48"),
    _route("2001:db8:1::7/128"),
    _route("fd00::1"),
]


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        ("10.1.2.3", "10.1.2.3/32"),  # the /32 beats the /24, /16 and /8 holding it
        ("10.1.2.4", "10.1.2.0/24"),
        ("10.1.3.1", "10.1.0.0/16"),
        ("10.2.0.1", "10.0.0.0/8"),
        ("10.9.9.9", "10.9.9.9"),  # a bare address is a host route
        ("192.168.1.1", "0.0.0.0/0"),
        ("2001:db8:1::7", "2001:db8:1::7/128"),
        ("2001:db8:1::8", "2001:db8:1::/48"),
        ("2001:db8:2::1", "2001:db8::/32"),
        ("fd00::1", "fd00::1"),
        ("::ffff:10.1.2.3", "10.1.2.3/32"),  # IPv4-mapped IPv6 peers match IPv4 routes
    ],
)
def test_lookup_picks_the_longest_prefix(ip: str, network: str) -> None:
    """The most specific network holding the address wins, for IPv4 and IPv6."""
    index = routing.build(ROUTES)
    address = routing.parse_ip(ip)
    assert address is not None
    route = routing.lookup(index, address)
    assert route is not None
    assert route.network == network


@pytest.mark.parametrize("ip", ["fd00::2", "2001:db9::1"])
def test_lookup_without_a_matching_network_is_none(ip: str) -> None:
    """An address outside every network has no route (IPv4's /0 does not cover IPv6)."""
    address = routing.parse_ip(ip)
    assert address is not None
    assert routing.lookup(routing.build(ROUTES), address) is None


def test_first_route_wins_on_the_same_network() -> None:
    """Two routes for one network: the earlier one in the snapshot wins, deterministically."""
    index = routing.build([_route("10.0.0.0/8", "ns/a"), _route("10.0.0.0/8", "ns/b"),
                           _route("10.0.0.1", "ns/c"), _route("10.0.0.1/32", "ns/d")])
    wide = routing.lookup(index, ipaddress.ip_address("10.0.0.2"))
    host = routing.lookup(index, ipaddress.ip_address("10.0.0.1"))
    assert wide is not None and wide.policy == "ns/a"
    assert host is not None and host.policy == "ns/c"


def test_invalid_networks_are_reported_and_match_nothing() -> None:
    """A network that does not parse is listed as invalid and the rest still work."""
    index = routing.build([_route("not-an-ip"), _route("10.0.0.0/33"), _route("10.0.0.0/8")])
    assert index.invalid == ("not-an-ip", "10.0.0.0/33")
    found = routing.lookup(index, ipaddress.ip_address("10.0.0.1"))
    assert found is not None and found.network == "10.0.0.0/8"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("fe80::1%eth0", "fe80::1"),
     ("::ffff:127.0.0.5", "127.0.0.5"), ("", None), ("nonsense", None)],
)
def test_parse_ip(text: str, expected: str | None) -> None:
    """Peer names become addresses; zones are dropped, mapped IPv4 unwrapped, junk is None."""
    parsed = routing.parse_ip(text)
    assert (str(parsed) if parsed is not None else None) == expected


_networks = st.builds(
    lambda addr, plen: ipaddress.IPv4Network((addr, plen), strict=False),
    st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=0, max_value=32),
)


@given(st.lists(_networks, max_size=20), st.integers(min_value=0, max_value=2**32 - 1))
def test_lookup_agrees_with_a_linear_scan(
    networks: list[ipaddress.IPv4Network], value: int
) -> None:
    """The index finds what a scan for the longest containing network finds."""
    routes = [_route(str(net)) for net in networks]
    ip = ipaddress.IPv4Address(value)
    containing = [net for net in networks if ip in net]
    found = routing.lookup(routing.build(routes), ip)
    if not containing:
        assert found is None
    else:
        assert found is not None
        assert ipaddress.ip_network(found.network).prefixlen == max(
            net.prefixlen for net in containing)
        assert ip in ipaddress.ip_network(found.network)
