"""The nginx version policy: HTTP/2 only from a floor version on.

Dokku's HTTP/2 site config broke on nginx older than 1.11.9, so the floor
defaults to that version (`nginx_floor` in regions.toml). The decision reads
what the installed binary prints for `nginx -v`, on stderr, with whatever
suffix the distribution adds: "nginx version: nginx/1.18.0 (Ubuntu)".
provision/lib.sh makes the same decision on the box; tests/unit checks both.
"""

from __future__ import annotations

import fnmatch
import re

DEFAULT_FLOOR = "1.11.9"
_VERSION = re.compile(r"nginx/(\d+(?:\.\d+)*)")


def parse_version(nginx_v_output: str) -> tuple[int, ...]:
    """Return the version numbers from `nginx -v` output.

    >>> parse_version("nginx version: nginx/1.18.0 (Ubuntu)")
    (1, 18, 0)
    """
    match = _VERSION.search(nginx_v_output)
    if match is None:
        raise ValueError(
            f"expected `nginx -v` output such as 'nginx version: nginx/1.22.1', "
            f"got {nginx_v_output.strip()!r}"
        )
    return tuple(int(part) for part in match.group(1).split("."))


def parse_floor(floor: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+)*", floor):
        raise ValueError(f"nginx_floor must look like 1.11.9, got {floor!r}")
    return tuple(int(part) for part in floor.split("."))


def http2_allowed(nginx_v_output: str, floor: str = DEFAULT_FLOOR) -> bool:
    """Tell whether the nginx that printed this output may serve HTTP/2."""
    version, minimum = parse_version(nginx_v_output), parse_floor(floor)
    width = max(len(version), len(minimum))
    return version + (0,) * (width - len(version)) >= minimum + (0,) * (
        width - len(minimum))


def matches_pin(package_version: str, pin: str) -> bool:
    """Tell whether a Debian package version matches an apt `Pin: version`.

    apt matches the pin as a glob against the full package version, so
    "1.11.*" matches "1.11.10-1~xenial". An empty pin matches anything.
    """
    return not pin or fnmatch.fnmatchcase(package_version, pin)
