"""The PROXY protocol header (HAProxy's v1 text and v2 binary forms) a load balancer
sends before the client's first byte, carrying the client's real address.

Behind a load balancer (or SNAT) every connection comes from the balancer; with the header
the ingress identifies the client by the header's source address, but only when the
connection itself comes from one of the configured trusted networks: anyone else could
write any address into a header. `parse` takes the bytes read so far and says whether they
are a whole header (and how long), need more bytes, or are no header. A ``LOCAL`` (v2) or
``UNKNOWN`` (v1) header, as health checks send, keeps the connection's own address.
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import msgspec

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
"""The longest v1 line, CRLF included (the spec's own bound)."""
PREFIX = 12
"""Bytes to read first: v2's signature, and no v1 line is shorter (``PROXY UNKNOWN\\r\\n``
is 15)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Header(msgspec.Struct, frozen=True, kw_only=True):
    length: int
    """Bytes of the header; what follows is the client's."""
    source: str | None = None
    """The client's address; None for LOCAL/UNKNOWN (keep the connection's)."""
    port: int = 0


class Incomplete(msgspec.Struct, frozen=True, kw_only=True):
    need: int
    """At least this many more bytes; 0 for v1: read up to the line's end."""


class Invalid(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


def networks(cidrs: Iterable[str]) -> list[Network]:
    """The trusted networks; `ValueError` names a bad one."""
    out: list[Network] = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"PODPOST_INGRESS__PROXY_PROTOCOL_CIDRS: {exc}") from None
    return out


def trusted(peer: str, nets: list[Network]) -> bool:
    """Whether a connection from ``peer`` must (and may) send a header."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in nets)


def parse(data: bytes) -> Header | Incomplete | Invalid:
    """The header at the start of ``data``."""
    if len(data) < PREFIX:
        return Incomplete(need=PREFIX - len(data))
    if data.startswith(V2_SIGNATURE):
        return _v2(data)
    if data.startswith(b"PROXY "):
        return _v1(data)
    return Invalid(reason="no PROXY protocol header")


def _v1(data: bytes) -> Header | Incomplete | Invalid:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        return Incomplete(need=0) if len(data) < V1_MAX else Invalid(reason="v1 line too long")
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        return Invalid(reason="v1 header is not ASCII")
    length = end + 2
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return Header(length=length)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        return Invalid(reason="v1 header needs PROXY TCP4|TCP6 src dst sport dport")
    _, family, source, destination, sport, dport = fields
    try:
        src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    except ValueError:
        return Invalid(reason="v1 header has a bad address")
    if src.version != (4 if family == "TCP4" else 6) or dst.version != src.version:
        return Invalid(reason="v1 header's addresses do not match its family")
    if not (_port(sport) and _port(dport)):
        return Invalid(reason="v1 header has a bad port")
    return Header(length=length, source=str(src), port=int(sport))


def _port(text: str) -> bool:
    return text.isdigit() and text == str(int(text)) and 0 <= int(text) <= 65535


_V2_ADDRESS_BYTES = {0x1: 12, 0x2: 36}
"""Address block length of the INET (4+4+2+2) and INET6 (16+16+2+2) families."""


def _v2(data: bytes) -> Header | Incomplete | Invalid:
    if len(data) < 16:
        return Incomplete(need=16 - len(data))
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    length = 16 + int.from_bytes(data[14:16], "big")
    if version != 2 or command not in (0, 1):
        return Invalid(reason="v2 header has a bad version or command")
    if len(data) < length:
        return Incomplete(need=length - len(data))
    if command == 0 or family not in _V2_ADDRESS_BYTES or transport != 1:
        return Header(length=length)  # LOCAL, or not TCP over IP: keep the peer's address
    if length - 16 < _V2_ADDRESS_BYTES[family]:
        return Invalid(reason="v2 header's address block is too short")
    block = data[16:length]
    if family == 0x1:
        source: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(block[:4])
        port = int.from_bytes(block[8:10], "big")
    else:
        source = ipaddress.IPv6Address(block[:16])
        port = int.from_bytes(block[32:34], "big")
    return Header(length=length, source=str(source), port=port)
