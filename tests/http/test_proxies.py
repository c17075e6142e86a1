"""Which address a request is counted under: the socket's, unless a trusted proxy names it."""

from __future__ import annotations

import pytest

from modelport.http.proxies import TrustedProxies, parse_address, parse_networks, rate_key

PROXIES = TrustedProxies(parse_networks(["10.0.0.0/24", "fd00::/8"]))
FORWARDED = TrustedProxies(parse_networks(["10.0.0.0/24"]), header="forwarded")


def headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode("latin-1")) for name, value in pairs]


@pytest.mark.parametrize(
    ("peer", "given", "client"),
    [
        # No trusted proxy in front: the header is the caller's own claim and counts for nothing.
        ("203.0.113.9", [("X-Forwarded-For", "198.51.100.7")], "203.0.113.9"),
        # A trusted proxy appended the address it saw.
        ("10.0.0.2", [("X-Forwarded-For", "198.51.100.7")], "198.51.100.7"),
        # Whatever the client wrote to the left of that is ignored.
        ("10.0.0.2", [("X-Forwarded-For", "1.1.1.1, 6.6.6.6, 198.51.100.7")], "198.51.100.7"),
        # Two trusted proxies in a row: both skipped, right to left.
        ("10.0.0.2", [("X-Forwarded-For", "6.6.6.6, 198.51.100.7, 10.0.0.3")], "198.51.100.7"),
        # The header split over several lines reads as one list, in order.
        (
            "10.0.0.2",
            [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.7")],
            "198.51.100.7",
        ),
        # Ports and brackets as some proxies write them.
        ("10.0.0.2", [("X-Forwarded-For", "198.51.100.7:51234")], "198.51.100.7"),
        ("10.0.0.2", [("X-Forwarded-For", "[2001:db8::7]:443")], "2001:db8::7"),
        # A trusted proxy with nothing to say: the proxy itself is the client.
        ("10.0.0.2", [], "10.0.0.2"),
        # Garbage where a trusted proxy's entry should be: stop at the last trusted hop.
        ("10.0.0.2", [("X-Forwarded-For", "198.51.100.7, not-an-address")], "10.0.0.2"),
        # A dual-stack socket's IPv4-mapped peer is that IPv4 address.
        ("::ffff:10.0.0.2", [("X-Forwarded-For", "198.51.100.7")], "198.51.100.7"),
        ("fd00::1", [("X-Forwarded-For", "2001:db8::9")], "2001:db8::9"),
        # The other header is not the one these proxies write: ignored.
        ("10.0.0.2", [("Forwarded", "for=6.6.6.6")], "10.0.0.2"),
    ],
)
def test_x_forwarded_for_is_believed_only_as_far_as_trusted_proxies_wrote_it(
    peer: str, given: list[tuple[str, str]], client: str
) -> None:
    assert PROXIES.resolve(peer, headers(*given))[0] == client


@pytest.mark.parametrize(
    ("peer", "given", "client"),
    [
        ("10.0.0.2", [("Forwarded", "for=198.51.100.7;proto=https")], "198.51.100.7"),
        ("10.0.0.2", [("Forwarded", 'for=6.6.6.6, for="198.51.100.7:80"')], "198.51.100.7"),
        ("10.0.0.2", [("Forwarded", 'for="[2001:db8::7]:443";by=10.0.0.2')], "2001:db8::7"),
        ("10.0.0.2", [("Forwarded", "for=198.51.100.7, for=10.0.0.9")], "198.51.100.7"),
        ("10.0.0.2", [("Forwarded", "for=_hidden")], "10.0.0.2"),
        ("10.0.0.2", [("X-Forwarded-For", "6.6.6.6")], "10.0.0.2"),
        ("203.0.113.9", [("Forwarded", "for=198.51.100.7")], "203.0.113.9"),
    ],
)
def test_the_forwarded_header_is_read_when_the_proxies_write_that_one(
    peer: str, given: list[tuple[str, str]], client: str
) -> None:
    assert FORWARDED.resolve(peer, headers(*given))[0] == client


def test_the_scheme_comes_from_a_trusted_proxy_only() -> None:
    proto = ("X-Forwarded-Proto", "https")
    assert PROXIES.resolve("10.0.0.2", headers(proto))[1] == "https"
    assert PROXIES.resolve("203.0.113.9", headers(proto))[1] is None
    assert PROXIES.resolve("10.0.0.2", headers(("X-Forwarded-Proto", "gopher")))[1] is None
    forwarded = headers(("Forwarded", "for=198.51.100.7;proto=https"))
    assert FORWARDED.resolve("10.0.0.2", forwarded) == ("198.51.100.7", "https")


def test_without_trusted_proxies_every_header_is_ignored() -> None:
    nobody = TrustedProxies([])
    spoofed = headers(("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-Proto", "https"))
    assert nobody.resolve("127.0.0.1", spoofed) == ("127.0.0.1", None)
    assert not nobody


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::2", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("testclient", "testclient"),
    ],
)
def test_rate_limits_count_an_ipv6_address_by_its_64(address: str, key: str) -> None:
    assert rate_key(address) == key


def test_addresses_parse_as_proxies_write_them() -> None:
    assert str(parse_address(" 198.51.100.7 ")) == "198.51.100.7"
    assert parse_address("unknown") is None
    assert parse_address("[2001:db8::1") is None
