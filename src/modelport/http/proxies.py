"""Which address a request comes from: the socket's, unless a proxy we trust says otherwise.

A client can write any ``X-Forwarded-For`` or ``Forwarded`` header it likes, so such a header
is read only when the socket peer is one of ``MODELPORT_TRUSTED_PROXIES``, and only the hops
those proxies appended count: the list is walked from the right, skipping trusted proxies, and
the first address that is not one of them is the client.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ProxyHeader = Literal["x-forwarded-for", "forwarded"]

# One element's "for=" parameter in RFC 7239; the value may be quoted.
_FORWARDED_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)', re.IGNORECASE)
_PROTOCOLS = {"http", "https"}


def parse_address(text: str) -> IPAddress | None:
    """An address as a proxy writes it: ``1.2.3.4``, ``1.2.3.4:80``, ``[v6]``, ``[v6]:80``."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 has more than one colon
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: they are the IPv4 address.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    """``10.0.0.0/8``, ``192.168.1.7`` or ``fd00::/8``; raises ValueError naming a bad entry."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8, 172.18.0.5)"
            ) from None
    return networks


@functools.lru_cache(maxsize=4096)  # parsed once per address, not once per request
def rate_key(address: str) -> str:
    """The part of an address a rate limit counts: IPv4 as is, IPv6 by its /64, since one
    subscriber usually holds a whole /64 and could otherwise take a fresh bucket per request."""
    parsed = parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed) if parsed is not None else address


def _header_values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Every comma-separated element of every ``name`` header line, in order."""
    elements: list[str] = []
    for key, value in headers:
        if key.lower() == name:
            elements.extend(part.strip() for part in value.decode("latin-1").split(","))
    return elements


def _forwarded_for(element: str) -> str:
    found = _FORWARDED_FOR.search(element)
    return found.group(1) if found else ""


class TrustedProxies:
    def __init__(self, networks: Sequence[IPNetwork], header: ProxyHeader = "x-forwarded-for"):
        self._networks = list(networks)
        self._header = header

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self._networks)

    def resolve(
        self, peer: str | None, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[str | None, str | None]:
        """(client address, scheme) for a request from socket ``peer``; the scheme is None
        unless a trusted proxy said which one the client used."""
        peer_address = parse_address(peer) if peer else None
        if not self.trusts(peer_address):
            return peer, None
        if self._header == "forwarded":
            hops = [_forwarded_for(element) for element in _header_values(headers, b"forwarded")]
        else:
            hops = _header_values(headers, b"x-forwarded-for")
        client = str(peer_address)
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                break  # not written by a proxy we trust: the last trusted hop is the client
            client = str(address)
            if not self.trusts(address):
                break
        return client, self._scheme(headers)

    def _scheme(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        if self._header == "forwarded":
            elements = _header_values(headers, b"forwarded")
            last = elements[-1] if elements else ""
            found = re.search(r'(?:^|;)\s*proto\s*=\s*"?([a-z]+)', last, re.IGNORECASE)
            proto = found.group(1) if found else ""
        else:
            protos = _header_values(headers, b"x-forwarded-proto")
            proto = protos[-1] if protos else ""
        proto = proto.lower()
        return proto if proto in _PROTOCOLS else None
