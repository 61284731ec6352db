"""Monitor checks against TLS servers on loopback that the tests start."""

from __future__ import annotations

import json
import socket
import subprocess
from types import SimpleNamespace

import pytest
from tls_boxes import Box, make_cert

from fleet import monitor
from fleet.monitor import Target

SHARED = "api.vatrates.test"


@pytest.fixture
def good_cert(tmp_path):
    return make_cert(tmp_path, [SHARED], days=60)


@pytest.fixture
def healthy_box(good_cert):
    box = Box(good_cert)
    yield box
    box.close()


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def target(port: int, region: str = "lab-west", **extra) -> Target:
    return Target(region=region, host="127.0.0.1", port=port, server_name=SHARED,
                  **extra)


def df_argv() -> list[str]:
    """Run the real df on this machine in place of the box's df over SSH."""
    return ["df", "-P", "/"]


def local_disk_percent() -> int:
    return monitor.parse_df(subprocess.check_output(df_argv(), text=True))


def check(box_target: Target, disk_argv=None, cert_days=14, timeout=3.0):
    import asyncio

    return asyncio.run(
        monitor.check_box(box_target, timeout, cert_days, disk_argv=disk_argv)
    )


def test_healthy_box_reports_everything(healthy_box):
    result = check(target(healthy_box.port, disk_alert_percent=100), df_argv())

    assert result.healthy, result.problems
    assert result.reachable
    assert result.status == 200
    assert result.ready is True
    assert result.lag_seconds == 0.5
    assert result.docs_read == 42
    assert result.latency_ms is not None and result.latency_ms > 0
    assert 58 < result.cert_days < 61
    assert result.cert_names == [SHARED]
    assert result.disk_percent == local_disk_percent()


def test_flat_readyz_body_understood(good_cert):
    box = Box(good_cert, flat=True)
    try:
        result = check(target(box.port))
    finally:
        box.close()

    assert result.ready is True
    assert result.lag_seconds == 0.5
    assert result.docs_read == 42


def test_shared_name_sent_as_host_and_sni(healthy_box):
    check(target(healthy_box.port))

    assert healthy_box.requests, "the box saw no request"
    path, host, sni = healthy_box.requests[0]
    assert path == "/readyz"
    assert host == SHARED
    assert sni == SHARED


def test_dead_port_is_unreachable():
    result = check(target(dead_port()))

    assert not result.healthy
    assert not result.reachable
    assert result.status is None
    assert any(p.startswith("unreachable") for p in result.problems)


def test_not_ready_box_is_unhealthy(good_cert):
    box = Box(good_cert, ready=False)
    try:
        result = check(target(box.port))
    finally:
        box.close()

    assert result.reachable
    assert result.status == 503
    assert result.ready is False
    assert result.last_error == "primary refused"
    assert "/readyz returned HTTP 503" in result.problems


def test_expiring_certificate_flagged(tmp_path):
    box = Box(make_cert(tmp_path, [SHARED], days=5))
    try:
        result = check(target(box.port), cert_days=14)
    finally:
        box.close()

    assert 3 < result.cert_days < 6
    assert any("certificate expires in" in p for p in result.problems)


def test_certificate_for_other_name_flagged(tmp_path):
    box = Box(make_cert(tmp_path, ["other.example"], days=60))
    try:
        result = check(target(box.port))
    finally:
        box.close()

    assert any(f"does not name {SHARED}" in p for p in result.problems)


def test_untrusted_chain_flagged_when_verifying(healthy_box, tmp_path):
    other_ca, _ = make_cert(tmp_path, ["unrelated.test"], days=60)
    box_target = target(healthy_box.port, ca_file=other_ca, verify_chain=True)

    result = check(box_target)

    assert any("certificate not trusted" in p for p in result.problems)


def test_trusted_chain_passes_when_verifying(healthy_box, good_cert):
    box_target = target(healthy_box.port, ca_file=good_cert[0], verify_chain=True)

    result = check(box_target)

    assert result.healthy, result.problems


def test_disk_over_threshold_flagged(healthy_box):
    used = local_disk_percent()
    if used == 0:
        pytest.skip("this machine's root disk reports 0% used")

    result = check(target(healthy_box.port, disk_alert_percent=used - 1), df_argv())

    assert result.disk_percent == used
    assert any("over the alert threshold" in p for p in result.problems)


def test_failing_ssh_reports_disk_unknown(healthy_box, tmp_path):
    config = tmp_path / "ssh-config"
    config.write_text(
        f"Host lab-west\n  HostName 127.0.0.1\n  Port {dead_port()}\n"
        f"  User vagrant\n  UserKnownHostsFile /dev/null\n"
        f"  StrictHostKeyChecking no\n"
    )
    box_target = target(healthy_box.port, ssh_config=config, ssh_host="lab-west")

    result = check(box_target, timeout=8.0)

    assert result.disk_percent is None
    assert any(p.startswith("disk use unknown") for p in result.problems)


def test_missing_ssh_config_skips_disk(healthy_box):
    result = check(target(healthy_box.port))

    assert result.disk_note == "not checked: no ssh-config for this box"
    assert result.healthy


def test_boxes_checked_in_parallel(good_cert):
    import time

    boxes = [Box(good_cert) for _ in range(3)]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts but never answers the TLS handshake
    targets = [target(b.port, region=f"box{i}") for i, b in enumerate(boxes)]
    targets.append(target(silent.getsockname()[1], region="silent"))
    try:
        started = time.monotonic()
        results = monitor.run(targets, timeout=2.0)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
        for b in boxes:
            b.close()

    assert [r.region for r in results] == ["box0", "box1", "box2", "silent"]
    assert all(r.healthy for r in results[:3])
    assert not results[3].healthy
    # One slow box costs one timeout, not one per box.
    assert elapsed < 4.5


def test_parse_df_reads_capacity():
    output = (
        "Filesystem     1024-blocks    Used Available Capacity Mounted on\n"
        "overlay          20511312 8123456  11322000      42% /\n"
    )
    assert monitor.parse_df(output) == 42


def test_parse_df_rejects_garbage():
    with pytest.raises(ValueError, match="unexpected df output"):
        monitor.parse_df("df: /: No such file\n")


def test_ssh_config_first_host_block(tmp_path):
    path = tmp_path / "ssh-config"
    path.write_text(
        "Host lab-east\n  HostName 127.0.0.1\n  Port 2233\n"
        "Host other\n  HostName 127.0.0.9\n"
    )
    assert monitor.read_ssh_config(path) == {
        "host": "lab-east", "hostname": "127.0.0.1", "port": "2233",
    }


def test_target_for_docker_box_uses_forwarded_port(tmp_path):
    (tmp_path / "ssh-config").write_text("Host lab-east\n  HostName 127.0.0.1\n")
    fleet = SimpleNamespace(project=SimpleNamespace(domain=SHARED))
    region = SimpleNamespace(
        name="lab-east", provider="docker", https_port=8543, box_dir=tmp_path,
        disk_alert_percent=75, hostname="lab-east.vatrates.test",
    )

    result = monitor.target_for(fleet, region)

    assert (result.host, result.port) == ("127.0.0.1", 8543)
    assert result.server_name == SHARED
    assert result.ssh_host == "lab-east"
    assert result.disk_alert_percent == 75
    assert result.verify_chain is False


def test_target_for_cloud_box_uses_manifest(tmp_path):
    manifest = {"address": "", "resources": [
        {"kind": "security_group", "id": "sg-1"},
        {"kind": "instance", "id": "i-1", "address": "203.0.113.7"},
    ]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    fleet = SimpleNamespace(project=SimpleNamespace(domain=SHARED))
    region = SimpleNamespace(
        name="eu-west-1", provider="aws", https_port=None, box_dir=tmp_path,
        disk_alert_percent=80, hostname="eu-west-1.api.vatrates.example",
    )

    result = monitor.target_for(fleet, region)

    assert (result.host, result.port) == ("203.0.113.7", 443)
    assert result.verify_chain is True


def test_endpoints_override_address(tmp_path):
    path = tmp_path / "endpoints.json"
    path.write_text('{"lab-west": "127.0.0.1:9443"}')
    assert monitor.read_endpoints(path) == {"lab-west": ("127.0.0.1", 9443)}
    path.write_text('{"lab-west": "9443"}')
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        monitor.read_endpoints(path)


def test_json_output_marks_unhealthy(healthy_box):
    results = monitor.run(
        [target(healthy_box.port), target(dead_port(), region="lab-east")],
        timeout=2.0,
    )

    payload = json.loads(monitor.to_json(results))

    assert payload["healthy"] is False
    assert [b["region"] for b in payload["boxes"]] == ["lab-west", "lab-east"]
    assert payload["boxes"][0]["healthy"] is True
    assert payload["boxes"][1]["healthy"] is False


def test_table_lists_each_box(healthy_box):
    from rich.console import Console

    results = monitor.run([target(healthy_box.port)], timeout=2.0)
    console = Console(record=True, width=200)
    console.print(monitor.to_table(results))
    text = console.export_text()

    assert "lab-west" in text
    assert "healthy" in text


def test_box_without_address_reported(tmp_path):
    fleet = SimpleNamespace(project=SimpleNamespace(domain=SHARED))
    region = SimpleNamespace(
        name="us-east-1", provider="aws", https_port=None, box_dir=tmp_path,
        disk_alert_percent=80, hostname="us-east-1.api.vatrates.example",
    )

    result = check(monitor.target_for(fleet, region))

    assert not result.healthy
    assert "no address known for box us-east-1" in result.problems[0]
