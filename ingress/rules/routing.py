"""Which route, and so which policy, a client address gets: longest-prefix match.

The ingress rebuilds the `Index` once per snapshot revision and looks every transaction up
in it. Host routes (a pod's /32 or /128) sit in one dict; wider networks are grouped by
prefix length, longest first, one dict per length, so a lookup costs one dict probe per
distinct prefix length rather than a scan over every network. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas import snapshot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class _Level:
    """All networks of one IP version and prefix length, keyed by network address."""

    version: int
    prefixlen: int
    routes: dict[int, snapshot.Route]


@dataclass(frozen=True)
class Index:
    hosts: dict[IPAddress, snapshot.Route] = field(default_factory=dict)
    levels: tuple[_Level, ...] = ()
    """Longest prefix first."""
    invalid: tuple[str, ...] = ()
    """Route networks that did not parse; they match nothing."""


def parse_ip(text: str) -> IPAddress | None:
    """A peer address as an IP; an IPv4-mapped IPv6 address becomes IPv4, a zone is dropped."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def build(routes: Iterable[snapshot.Route]) -> Index:
    """Index the routes. On the same network twice, the first route wins."""
    hosts: dict[IPAddress, snapshot.Route] = {}
    by_level: dict[tuple[int, int], dict[int, snapshot.Route]] = {}
    invalid: list[str] = []
    for route in routes:
        try:
            net = ipaddress.ip_network(route.network.strip(), strict=False)
        except ValueError:
            invalid.append(route.network)
            continue
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
            mapped = net.network_address.ipv4_mapped
            net = ipaddress.ip_network(f"{mapped}/{max(net.prefixlen - 96, 0)}", strict=False)
        if net.prefixlen == net.max_prefixlen:
            hosts.setdefault(net.network_address, route)
        else:
            level = by_level.setdefault((net.version, net.prefixlen), {})
            level.setdefault(int(net.network_address), route)
    levels = tuple(
        _Level(version=version, prefixlen=prefixlen, routes=routes_)
        for (version, prefixlen), routes_ in sorted(
            by_level.items(), key=lambda item: item[0][1], reverse=True
        )
    )
    return Index(hosts=hosts, levels=levels, invalid=tuple(invalid))


def lookup(index: Index, ip: IPAddress) -> snapshot.Route | None:
    """The route of the most specific network holding ``ip``, or None."""
    route = index.hosts.get(ip)
    if route is not None:
        return route
    bits = ip.max_prefixlen
    value = int(ip)
    for level in index.levels:
        if level.version != ip.version:
            continue
        host_bits = bits - level.prefixlen
        found = level.routes.get((value >> host_bits) << host_bits)
        if found is not None:
            return found
    return None
