"""Which route, and so which policy, a client address gets: longest-prefix match.

The ingress rebuilds the `Index` once per snapshot revision and looks every transaction up
in it; when the routes come from the ROUTES bucket instead (a cluster too big for one
snapshot), a `Table` keeps one `Index` up to date one route at a time, as the bucket's
copy (`runtime.policies.RouteMirror`) applies them. Host routes (a pod's /32 or /128) sit
in one dict; wider networks are grouped by prefix length, longest first, one dict per
length, so a lookup costs one dict probe per distinct prefix length rather than a scan
over every network. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas import names, snapshot

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


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(text: str) -> IPNetwork | None:
    """A route's network; an IPv4-mapped IPv6 network becomes IPv4."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
        mapped = net.network_address.ipv4_mapped
        net = ipaddress.ip_network(f"{mapped}/{max(net.prefixlen - 96, 0)}", strict=False)
    return net


def _host(text: str) -> ipaddress.IPv4Address | None:
    """A pod's IPv4 host route (``10.1.2.3/32``, as the reconciler writes it) parsed the
    fast way; None for anything else (then `_network` decides)."""
    if not text.endswith("/32"):
        return None
    try:
        return ipaddress.IPv4Address(text[:-3])
    except ValueError:
        return None


def build(routes: Iterable[snapshot.Route]) -> Index:
    """Index the routes. On the same network twice, the first route wins."""
    hosts: dict[IPAddress, snapshot.Route] = {}
    by_level: dict[tuple[int, int], dict[int, snapshot.Route]] = {}
    invalid: list[str] = []
    for route in routes:
        net = _network(route.network)
        if net is None:
            invalid.append(route.network)
            continue
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


class Table:
    """An `Index` kept up to date one route at a time, keyed as the ROUTES bucket is
    (`schemas.names.route_key` of the route's network: one route per network).

    Host routes (every pod) go into the index's host dict in place: a put or a delete is
    one dict operation, and `index` is always the current one. Wider networks (static
    sources: few) rebuild the per-length levels when one of them changes. The policy key
    of each route is interned, so 150,000 routes of 10,000 policies hold 10,000 strings."""

    def __init__(self) -> None:
        self._hosts: dict[IPAddress, snapshot.Route] = {}
        self._wide: dict[str, snapshot.Route] = {}
        self._invalid: dict[str, str] = {}
        self._policies: dict[str, str] = {}
        self.index = Index(hosts=self._hosts)

    def __len__(self) -> int:
        return len(self._hosts) + len(self._wide)

    def put(self, key: str, route: snapshot.Route) -> None:
        if key in self._wide or key in self._invalid:
            self.delete(key)
        policy = self._policies.setdefault(route.policy, route.policy)
        if policy is not route.policy:
            route = snapshot.Route(network=route.network, policy=policy, source=route.source)
        host = _host(route.network)
        if host is not None:
            self._hosts[host] = route
            return
        net = _network(route.network)
        if net is None:
            self._invalid[key] = route.network
            self._reindex()
        elif net.prefixlen == net.max_prefixlen:
            self._hosts[net.network_address] = route
        else:
            self._wide[key] = route
            self._reindex()

    def delete(self, key: str) -> None:
        network = names.route_network(key)
        host: IPAddress | None = _host(network)
        if host is None:
            net = _network(network)
            host = net.network_address if net and net.prefixlen == net.max_prefixlen else None
        if host is not None and self._hosts.pop(host, None) is not None:
            return
        if self._wide.pop(key, None) is not None or self._invalid.pop(key, None) is not None:
            self._reindex()

    def clear(self) -> None:
        self._hosts.clear()
        self._wide.clear()
        self._invalid.clear()
        self._policies.clear()
        self._reindex()

    def _reindex(self) -> None:
        wide = build(self._wide[key] for key in sorted(self._wide))
        self.index = Index(hosts=self._hosts, levels=wide.levels,
                           invalid=tuple(self._invalid.values()))
