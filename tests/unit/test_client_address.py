"""Who a request comes from: the peer, unless it is a trusted proxy, whose X-Forwarded-For is
then read from the right; an IPv6 client counts by its /64."""

from __future__ import annotations

from typing import Any

import pytest

from shop.access.client_address import Clients, address_key, subject_key


def _scope(peer: str, *forwarded: str) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return {"client": (peer, 50000), "headers": [(b"host", b"shop"), *headers]}


PROXIES = Clients(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("scope", "client"),
    [
        (_scope("203.0.113.9"), "203.0.113.9"),
        # An untrusted peer's header proves nothing.
        (_scope("203.0.113.9", "198.51.100.1"), "203.0.113.9"),
        (_scope("10.1.2.3", "198.51.100.1"), "198.51.100.1"),
        # What the client wrote itself is on the left; each trusted proxy appends on the right.
        (_scope("10.1.2.3", "1.1.1.1, 198.51.100.1, 10.9.9.9"), "198.51.100.1"),
        (_scope("10.1.2.3", "1.1.1.1", "198.51.100.1"), "198.51.100.1"),
        (_scope("fd00::5", "2001:db8::7"), "2001:db8::7"),
        (_scope("10.1.2.3", "10.9.9.9"), "10.9.9.9"),  # only proxies: the farthest
        (_scope("10.1.2.3"), "10.1.2.3"),  # a proxy that forwarded nothing
        (_scope("10.1.2.3", "not-an-address"), "not-an-address"),
    ],
)
def test_the_client_is_the_peer_or_what_a_trusted_proxy_forwarded(
    scope: dict[str, Any], client: str
) -> None:
    assert PROXIES.address(scope) == client


def test_no_trusted_proxy_means_the_peer_and_star_trusts_every_peer() -> None:
    scope = _scope("127.0.0.1", "198.51.100.1")
    assert Clients([]).address(scope) == "127.0.0.1"
    assert Clients(["*"]).address(scope) == "198.51.100.1"
    assert Clients(["127.0.0.1"]).address({"client": None, "headers": []}) == ""


def test_an_ipv6_client_counts_by_its_64_and_ipv4_by_its_address() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("192.0.2.1") != address_key("192.0.2.2")
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1")
    assert address_key("[2001:db8:1:2::1]:443") == address_key("2001:db8:1:2::1")
    assert address_key("192.0.2.1:8080") == address_key("192.0.2.1")
    assert subject_key("192.0.2.1") != address_key("192.0.2.1")


def test_a_trusted_proxy_must_be_an_address_or_network() -> None:
    with pytest.raises(ValueError, match=r"proxy\.internal"):
        Clients(["10.0.0.0/8", "proxy.internal"])
