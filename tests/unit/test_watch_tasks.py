"""The monitor and nightly tasks, run as commands against loopback boxes."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from tls_boxes import Box, make_cert

REPO = Path(__file__).resolve().parents[2]
INVOKE = REPO / ".venv" / "bin" / "invoke"
SHARED = "api.vatrates.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path, https_ports: dict[str, int]) -> Path:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI test\n"
    (folder / "operators.pub").write_text(key)
    lines = [
        "[project]",
        'name = "vatrates"',
        f'domain = "{SHARED}"',
        f'primary = "{next(iter(https_ports))}"',
        'operator_keys = "operators.pub"',
    ]
    for name, port in https_ports.items():
        lines += [
            f"[regions.{name}]",
            'provider = "docker"',
            f'hostname = "{name}.vatrates.test"',
            f"ssh_port = {free_port()}",
            f"http_port = {free_port()}",
            f"https_port = {port}",
        ]
    path = folder / "regions.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_task(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(INVOKE), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def box(tmp_path):
    server = Box(make_cert(tmp_path, [SHARED], days=60))
    yield server
    server.close()


def test_monitor_task_exit_zero_when_healthy(tmp_path, box):
    config = write_config(tmp_path, {"lab-a": box.port})

    done = run_task("monitor", "--config", str(config), "--json", "--timeout", "3")

    payload = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert payload["healthy"] is True
    assert payload["boxes"][0]["address"] == f"127.0.0.1:{box.port}"


def test_monitor_task_exit_one_for_dead_box(tmp_path, box):
    config = write_config(tmp_path, {"lab-a": box.port, "lab-b": free_port()})

    done = run_task("monitor", "--config", str(config), "--timeout", "3")

    assert done.returncode == 1
    assert "1 of 2 boxes unhealthy: lab-b" in done.stderr
    assert "lab-a" in done.stdout


def test_monitor_task_exit_two_for_unknown_region(tmp_path, box):
    config = write_config(tmp_path, {"lab-a": box.port})

    done = run_task("monitor", "--config", str(config), "--region", "lab-z")

    assert done.returncode == 2
    assert "lab-z" in done.stderr


def test_nightly_task_writes_red_page_without_infra(tmp_path, box):
    # No box listens for SSH here, so the infra step fails and the region is red.
    config = write_config(tmp_path, {"lab-a": box.port})
    reports = tmp_path / "reports"

    done = run_task("nightly", "--config", str(config), "--reports", str(reports),
                    "--timeout", "3")

    page = (reports / "nightly" / "index.html").read_text()
    assert done.returncode == 1
    assert "nightly run red for: lab-a" in done.stderr
    assert 'class="red" data-region="lab-a"' in page
