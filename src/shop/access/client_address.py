"""Who a request comes from, for per-client limits: the address of the peer, or, when the peer
is a proxy this service trusts (`FORWARDED_ALLOW_IPS`), the client address it forwarded.

Behind an ingress or a load balancer every connection comes from the proxy, so without its
`X-Forwarded-For` all anonymous clients would share one bucket. The header is believed only from
a trusted peer, and read from the right: each trusted proxy appends the address it saw, so the
first address from the right that is not a trusted proxy is the client's (anything to its left
was written by the client and proves nothing). uvicorn's own proxy handling is off (`shop
serve`), so the FastAPI routes and the fast path see the same peer and decide alike.

Limits count an IPv6 client by its /64 (one customer's line gets a whole /64, so its addresses
are one client) and an IPv4 client by its address. Keys are 64-bit hashes (BLAKE2b) of what they
count, so addresses and token subjects share one key space without meeting.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

from shop.access.bucket_table import MAX_KEY

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Clients:
    """Keys of the clients of requests, given the proxies whose forwarded address is believed:
    addresses or networks, `*` for every peer (a ValueError names one that is neither)."""

    def __init__(self, trusted: Iterable[str]) -> None:
        trusted = tuple(trusted)
        self._everyone = "*" in trusted
        self._networks = tuple(ipaddress.ip_network(t, strict=False) for t in trusted if t != "*")

    def address(self, scope: Any) -> str:
        """The client's address as text (the peer's, or the one a trusted proxy forwarded)."""
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        if not self._trusts(peer):
            return peer
        forwarded = [
            value.decode("latin-1")
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
        ]
        hops = [hop.strip() for hop in ",".join(forwarded).split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._trusts(hop):
                return hop
        return hops[0] if hops else peer

    def key(self, scope: Any) -> int:
        """The bucket key of the request's client."""
        return address_key(self.address(scope))

    def _trusts(self, host: str) -> bool:
        if self._everyone:
            return True
        address = _address(host)
        return address is not None and any(address in network for network in self._networks)


def address_key(host: str) -> int:
    """The bucket key of a client address: an IPv6 address counts by its /64."""
    address = _address(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            host = str(ipaddress.IPv6Network((address, 64), strict=False))
    if isinstance(address, ipaddress.IPv4Address):
        host = str(address)
    return _key(f"address {host}")


def subject_key(subject: str) -> int:
    """The bucket key of a token's subject."""
    return _key(f"subject {subject}")


def _key(text: str) -> int:
    digest = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return min(digest, MAX_KEY)


def _address(host: str) -> Address | None:
    """An address written as `a.b.c.d`, `a.b.c.d:port`, an IPv6 address or `[v6]:port`."""
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
