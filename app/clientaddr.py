"""The caller's address, from X-Forwarded-For only behind a trusted proxy.

If any peer could set X-Forwarded-For, a client could pick its own anonymous
rate-limit bucket and its own country. So the header counts only when the TCP
peer is one of TRUSTED_PROXIES (the box's own nginx), and then the client is
the right-most address in the header that is not itself a trusted proxy.
"""

from __future__ import annotations

import functools
import ipaddress

from app.errors import ApiError, clip
from app.geo import IPAddress, parse_address
from app.settings import Network

# X-Forwarded-For lists one address per proxy hop; more is not a real chain.
MAX_FORWARDED_HOPS = 20


class ClientAddressResolver:
    """Finds the client address of a request, given the trusted proxies."""

    def __init__(self, trusted: tuple[Network, ...]) -> None:
        self.trusted = trusted
        self.is_trusted = functools.lru_cache(maxsize=4096)(self._is_trusted)

    def _is_trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def resolve(self, peer: str | None, forwarded_for: list[str]) -> str | None:
        """Return the client's address as text (None if the peer is unknown).

        `forwarded_for` contains the values of every X-Forwarded-For header.
        Raises a 400 ApiError for a malformed header sent through a trusted
        proxy.
        """
        if peer is None or not forwarded_for or not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        if len(hops) > MAX_FORWARDED_HOPS:
            raise ApiError(
                400,
                "invalid_forwarded_for",
                f"X-Forwarded-For lists {len(hops)} addresses; at most "
                f"{MAX_FORWARDED_HOPS} proxy hops are accepted",
            )
        for hop in reversed(hops):
            if not hop:
                raise ApiError(
                    400,
                    "invalid_forwarded_for",
                    "X-Forwarded-For has an empty entry; send comma-separated "
                    "IP addresses",
                )
            address = self._parse_hop(hop)
            if not self.is_trusted(str(address)):
                return str(address)
        return str(self._parse_hop(hops[0]))

    @staticmethod
    def _parse_hop(hop: str) -> IPAddress:
        try:
            return parse_address(hop, what="X-Forwarded-For")
        except ApiError as error:
            raise ApiError(
                400,
                "invalid_forwarded_for",
                f"X-Forwarded-For entry {clip(hop)!r} is not an IP address: "
                f"{error.message}",
            ) from None
