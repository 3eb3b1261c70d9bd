"""The client's IP address behind trusted reverse proxies (``TRUSTED_PROXIES``).

One rule for every transport (REST, both WebSocket transports) and every use (IP
allow-lists, anything per client): the peer is the client, unless the peer is a trusted
proxy; then ``X-Forwarded-For`` is read from the right (each proxy appends the address it
got the request from), skipping trusted proxies, and the first address that is not one is
the client. Addresses a client wrote itself (to the left) are never believed. ``serve``
tells uvicorn to believe no forwarding header: the application decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

__all__ = ["FORWARDED_FOR", "Network", "client_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDED_FOR = "x-forwarded-for"


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in trusted)


def client_address(
    peer: str | None, headers: Mapping[str, str], trusted: Sequence[Network]
) -> str | None:
    """The client of a request from ``peer`` with ``headers`` (names in lower case, or a
    case-insensitive mapping), given the ``trusted`` proxies."""
    if peer is None or not trusted or not _trusted(peer, trusted):
        return peer
    forwarded = headers.get(FORWARDED_FOR)
    if not forwarded:
        return peer
    hops = [hop.strip() for hop in forwarded.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a hop that is not an address: nothing behind it can be believed
        if not _trusted(hop, trusted):
            return hop
    return hops[0]  # every hop is a trusted proxy: the first one is where it came from
