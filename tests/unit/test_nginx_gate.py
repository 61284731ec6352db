"""The nginx HTTP/2 gate, fed real `nginx -v` output (nginx prints it on stderr).

The same table runs through the Python gate (fleet.nginx_policy, used by the
infra suite) and the bash gate (provision/lib.sh, used on the box).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fleet import nginx_policy

LIB = Path(__file__).resolve().parents[2] / "provision" / "lib.sh"
FLOOR = "1.11.9"

CASES = [
    ("nginx/1.9.5", False),
    ("nginx version: nginx/1.9.5", False),
    ("nginx version: nginx/1.10.1", False),
    ("nginx version: nginx/1.10.3 (Ubuntu)", False),
    ("nginx version: nginx/1.11.5", False),
    ("nginx version: nginx/1.18.0 (Ubuntu)", True),
    # The floor itself passes; a numeric comparison puts 1.11.10 above 1.11.9.
    ("nginx version: nginx/1.11.9", True),
    ("nginx version: nginx/1.11.10", True),
    ("nginx version: nginx/1.22.1", True),
]


def bash_decision(output: str, floor: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", 'source "$1"; nginx_http2_decision "$2" "$3"', "gate",
         str(LIB), output, floor],
        capture_output=True, text=True, timeout=10, check=False,
    )


@pytest.mark.parametrize(("output", "allowed"), CASES)
def test_python_gate(output, allowed):
    assert nginx_policy.http2_allowed(output, FLOOR) is allowed


@pytest.mark.parametrize(("output", "allowed"), CASES)
def test_bash_gate(output, allowed):
    result = bash_decision(output, FLOOR)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("on" if allowed else "off")


def test_gates_follow_floor_setting():
    output = "nginx version: nginx/1.18.0 (Ubuntu)"
    assert nginx_policy.http2_allowed(output, "1.20") is False
    assert bash_decision(output, "1.20").stdout.strip() == "off"
    assert nginx_policy.http2_allowed(output, "1.18.0") is True
    assert bash_decision(output, "1.18.0").stdout.strip() == "on"


def test_version_keeps_distribution_suffix_out():
    output = "nginx version: nginx/1.18.0 (Ubuntu)"
    assert nginx_policy.parse_version(output) == (1, 18, 0)
    result = subprocess.run(
        ["bash", "-c", 'source "$1"; nginx_version_from_output "$2"', "gate",
         str(LIB), output],
        capture_output=True, text=True, timeout=10, check=False,
    )
    assert result.stdout.strip() == "1.18.0"


@pytest.mark.parametrize("output", ["", "Apache/2.4.57", "nginx version: openresty"])
def test_gates_reject_other_output(output):
    with pytest.raises(ValueError, match="nginx -v"):
        nginx_policy.http2_allowed(output, FLOOR)
    result = bash_decision(output, FLOOR)
    assert result.returncode != 0
    assert "cannot read an nginx version" in result.stderr


def test_invalid_floor_rejected():
    with pytest.raises(ValueError, match="nginx_floor"):
        nginx_policy.http2_allowed("nginx version: nginx/1.22.1", "latest")


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="nginx is not installed on this machine")
def test_gates_read_installed_nginx_stderr():
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    result = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    assert result.stdout == ""
    assert result.stderr.startswith("nginx version: nginx/")
    expected = nginx_policy.http2_allowed(result.stderr, FLOOR)
    assert bash_decision(result.stderr, FLOOR).stdout.strip() == (
        "on" if expected else "off")


@pytest.mark.parametrize(("version", "pin", "matches"), [
    ("1.11.10-1~xenial", "1.11.*", True),
    ("1.22.1-9", "1.11.*", False),
    ("1.22.1-9", "", True),
    ("1.18.0-6ubuntu14.4", "1.18.0-6ubuntu14.4", True),
])
def test_pin_matching(version, pin, matches):
    assert nginx_policy.matches_pin(version, pin) is matches
