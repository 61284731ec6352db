"""IP address to country, with geoip2fast's bundled database.

geoip2fast ships its data inside the wheel as gzipped files next to the
module; `geoip2fast-ipv6.dat.gz` (about 1.9 MB, built from MaxMind's
GeoLite2 Country) covers IPv4 and IPv6. Loading it takes about 0.3 s and a
lookup a few microseconds (measured with geoip2fast 1.2.2 on an AMD EPYC core),
so it is loaded once per process at start and looked up in the request path.
geoip2fast keeps the loaded data in module globals: one database per process.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from app.errors import ApiError, clip

DATA_FILE = "geoip2fast-ipv6.dat.gz"
# Maximum length of an IPv6 address in text, with an embedded IPv4 address.
MAX_ADDRESS_LENGTH = 45

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Location:
    """The country an address belongs to, as the database states it."""

    address: str
    country_code: str
    country_name: str
    network: str


def parse_address(raw: str, what: str = "ip") -> IPAddress:
    """Parse a client-supplied address, raising a 400 ApiError if invalid.

    An IPv4-mapped IPv6 address (::ffff:192.0.2.1) becomes the IPv4 address.
    """
    if len(raw) > MAX_ADDRESS_LENGTH:
        raise ApiError(
            400,
            "invalid_address",
            f"{what} is {len(raw)} characters long; an IP address has at most "
            f"{MAX_ADDRESS_LENGTH}",
        )
    if "%" in raw:
        raise ApiError(
            400,
            "invalid_address",
            f"{what} {clip(raw)!r} has a zone index; send a global address "
            "without %zone",
        )
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        raise ApiError(
            400,
            "invalid_address",
            f"{what} {clip(raw)!r} is not an IPv4 or IPv6 address",
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


_NAMED_RANGES = [
    (kind, ipaddress.ip_network(network))
    for kind, networks in {
        "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),
        "documentation": (
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "2001:db8::/32",
        ),
        "shared (carrier-grade NAT)": ("100.64.0.0/10",),
    }.items()
    for network in networks
]


def _range_kind(address: IPAddress) -> str:
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    for kind, network in _NAMED_RANGES:
        if address.version == network.version and address in network:
            return kind
    if address.is_reserved:
        return "reserved"
    return "special-purpose"


def _with_article(kind: str) -> str:
    """Prefix a range kind with its indefinite article: 'an unspecified'."""
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def check_public(address: IPAddress, what: str = "ip") -> None:
    """Raise a 400 ApiError unless `address` is a globally routable address."""
    if address.is_global and not address.is_multicast:
        return
    raise ApiError(
        400,
        "address_not_public",
        f"{what} {address} is {_with_article(_range_kind(address))} address, "
        "which has no country; send a public address",
        extra={"ip": str(address)},
    )


class Geolocator:
    """Country lookups on the geoip2fast database, loaded at construction."""

    def __init__(self) -> None:
        from geoip2fast import GeoIP2Fast

        self._db = GeoIP2Fast(geoip2fast_data_file=DATA_FILE)
        self.info = self._db.get_database_info().get("source_info", {})

    def country_names(self) -> dict[str, str]:
        """Map every ISO country code in the database to its English name."""
        import geoip2fast.geoip2fast as module

        return {
            code: name
            for code, name in module.geoipCountryNamesDict.items()
            if len(code) == 2 and code.isalpha()
        }

    def locate(self, address: IPAddress) -> Location | None:
        """Return the address's country, or None if the database has none."""
        result = self._db.lookup(str(address))
        code = result.country_code
        if len(code) != 2 or not code.isalpha() or result.is_private:
            return None
        return Location(str(address), code, result.country_name, result.cidr)
