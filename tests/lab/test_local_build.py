"""The README's first command, end to end: `invoke build --region local`.

Real Docker engine, real Vagrant, real provisioning over SSH and real
testinfra. The test starts from no `local` box, builds it, asks the app
for Germany's VAT rate over HTTP/2 through the box's nginx, reads the infra
report, restarts the box's container and waits for the app to answer again,
builds a second time to show that run does no work, and destroys the box at
the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from fleet import regions

pytestmark = [pytest.mark.slow, pytest.mark.lab, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
INVOKE = REPO / ".venv" / "bin" / "invoke"
REPORT = REPO / "reports" / "local" / "junit.xml"
GERMANY = "80.156.55.1"  # an address geolocated in Germany
GERMAN_STANDARD_RATE = 19.0
# The summary table is wide; a wide terminal keeps each row on one line.
ENV = {**os.environ, "COLUMNS": "250", "TERM": "dumb"}
ROW = re.compile(r"^[│|]\s*local\s*[│|]\s*(\S+)\s*[│|]\s*(.*?)\s*[│|]\s*([\d.]+)\s*[│|]$")


def invoke(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(INVOKE), *args], cwd=REPO, env=ENV, text=True,
                          capture_output=True, timeout=timeout, check=False)


def summary(output: str) -> dict[str, str]:
    """Map step to result from the summary table `invoke build` prints."""
    rows = {}
    for line in output.splitlines():
        match = ROW.match(line.strip())
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def curl_rates(port: int) -> tuple[str, dict]:
    result = subprocess.run(
        ["curl", "-sS", "-k", "--http2", "--max-time", "20",
         "-w", "\n%{http_version}", f"https://127.0.0.1:{port}/v1/rates?ip={GERMANY}"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition("\n")
    return version, json.loads(body)


def ready(port: int) -> bool:
    result = subprocess.run(
        ["curl", "-sk", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
         f"https://127.0.0.1:{port}/readyz"],
        capture_output=True, text=True, timeout=15, check=False,
    )
    return result.stdout == "200"


def publishing(port: int) -> list[str]:
    """Return the names of running containers that publish a host port."""
    return subprocess.run(
        ["docker", "ps", "--filter", f"publish={port}", "--format", "{{.Names}}"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()


def restart_box(port: int, timeout: float = 180.0) -> float | None:
    """Restart the box's container; return seconds until the app is ready again.

    Returns None if the app did not answer through nginx within `timeout`.
    """
    names = publishing(port)
    assert len(names) == 1, f"expected one container publishing {port}: {names}"
    started = time.monotonic()
    subprocess.run(["docker", "restart", names[0]], capture_output=True,
                   timeout=120, check=True)
    while time.monotonic() - started < timeout:
        if ready(port):
            return time.monotonic() - started
        time.sleep(2)
    return None


@pytest.fixture(scope="module")
def local_region() -> regions.Region:
    return regions.load(REPO / "regions.toml").regions["local"]


@pytest.fixture(scope="module")
def builds(local_region):
    """Build from no box twice; destroy the box afterwards."""
    invoke("destroy", "--region", "local", "--yes", timeout=600)
    # A box of another checkout would hold the ports and the container name.
    others = publishing(local_region.https_port)
    assert not others, (
        f"container {others[0]} already publishes port {local_region.https_port}; "
        f"destroy it from its checkout or with `docker rm -f {others[0]}`")
    try:
        started = time.monotonic()
        first = invoke("build", "--region", "local", timeout=3000)
        first_seconds = time.monotonic() - started
        assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
        version, rates = curl_rates(local_region.https_port)
        report = REPORT.read_bytes()
        restart_seconds = restart_box(local_region.https_port)

        started = time.monotonic()
        second = invoke("build", "--region", "local", timeout=1800)
        second_seconds = time.monotonic() - started
        print(f"\nlocal build: first {first_seconds:.0f} s, second "
              f"{second_seconds:.0f} s, ready {restart_seconds or 0:.0f} s after "
              f"a container restart")
        yield {
            "first": first, "first_seconds": first_seconds,
            "second": second, "second_seconds": second_seconds,
            "http_version": version, "rates": rates, "report": report,
            "restart_seconds": restart_seconds,
        }
    finally:
        invoke("destroy", "--region", "local", "--yes", timeout=600)


def test_rates_over_http2_through_nginx(builds):
    assert builds["http_version"] == "2"
    assert builds["rates"]["country"]["code"] == "DE"
    assert builds["rates"]["standard_rate"] == GERMAN_STANDARD_RATE


def test_infra_report_passes_or_not_applicable(builds):
    root = ElementTree.fromstring(builds["report"])
    cases = root.iter("testcase")
    failed, skipped, passed = [], [], []
    for case in cases:
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name"))
        elif (skip := case.find("skipped")) is not None:
            skipped.append((case.get("name"), skip.get("message", "")))
        else:
            passed.append(case.get("name"))
    assert failed == []
    assert len(passed) >= 15
    for name, message in skipped:
        assert "not applicable" in message, f"{name} skipped without a reason: {message}"


def test_app_answers_after_box_restart(builds):
    """Reboot recovery: systemd brings the release back and nginx finds it."""
    assert builds["restart_seconds"] is not None, \
        "the app did not answer through nginx within 180 s of a container restart"


def test_first_build_did_the_work(builds):
    rows = summary(builds["first"].stdout)
    assert list(rows) == ["box", "render", "up", "provision", "deploy", "test"]
    assert rows["up"].startswith("was not_created")
    assert rows["provision"] != "no change"
    assert "change" in rows["provision"]
    assert rows["deploy"].startswith("released")


def test_second_build_is_a_no_op(builds):
    second = builds["second"]
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    rows = summary(second.stdout)
    for step in ("box", "render", "provision", "deploy"):
        assert rows.get(step) == "no change", f"{step}: {rows.get(step)}"
    assert rows.get("up") == "already running"
    assert "passed" in rows.get("test", "")
