"""Which address a request comes from: the TCP peer, or — only when that peer is one of the
configured proxy networks (`security.trusted_proxies`) — the client its `X-Forwarded-For` names.

    client_address("10.0.0.5", "203.0.113.7, 10.0.0.9", ["10.0.0.0/8"])   # "203.0.113.7"
    client_address("198.51.100.1", "203.0.113.7", ["10.0.0.0/8"])         # "198.51.100.1": not a proxy

The header is read from the right: each trusted proxy appends the address it received the
request from, so the rightmost hop that is not itself a trusted proxy is the client; anything
left of it was written by the client and is never believed. A garbled hop stops the walk at the
last proxy. At most `MAX_HOPS` hops are read.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Iterable, Sequence

MAX_HOPS = 16
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(str(net), strict=False) for net in trusted)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address, networks: Iterable[Network]) -> bool:
    return address is not None and any(address in net for net in networks)


def client_address(peer: str, forwarded: str | None, trusted: Sequence) -> str:
    networks = _networks(tuple(str(net) for net in trusted))
    if not networks or not forwarded or not _trusted(_address(peer), networks):
        return peer
    client = peer
    for hop in reversed(forwarded.rsplit(",", MAX_HOPS)[-MAX_HOPS:]):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not _trusted(address, networks):
            break
    return client
