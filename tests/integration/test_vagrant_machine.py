"""Boot a docker lab box through fleet.vagrant.Machine with the real Vagrant.

The region here has its own name and ports, so it never touches the `local`
box or the multi-box lab.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from fleet import pipeline, regions, render, vagrant

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.lab,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(shutil.which("vagrant") is None or shutil.which("docker") is None,
                       reason="needs vagrant and docker (scripts/setup)"),
]

CONFIG = """
[project]
name = "vatfleet-test"
domain = "api.vatrates.test"
primary = "vagrant-check"

[regions.vagrant-check]
provider = "docker"
hostname = "vagrant-check.vatrates.test"
ssh_port = 2291
http_port = 8191
https_port = 8591
"""


@pytest.fixture
def machine(tmp_path):
    config = tmp_path / "regions.toml"
    config.write_text(textwrap.dedent(CONFIG))
    fleet = regions.load(config)
    region = fleet.regions["vagrant-check"]

    # The lab box image comes from the box step; it is a no-op when current.
    from fleet import box

    ctx = pipeline.StepContext(fleet, region, pipeline.log_path_for(region, "box"),
                               step="box")
    box.run(ctx)

    render.render(fleet, region)
    machine = vagrant.Machine(region)
    yield machine
    machine.destroy()


def test_machine_lifecycle(machine):
    assert machine.status() == "not_created"

    machine.up()
    assert machine.status() == "running"

    options = machine.ssh_config()
    assert options["HostName"] == "127.0.0.1"
    assert options["Port"] == "2291"
    assert options["User"] == "vagrant"
    path = machine.ssh_config_path()
    assert "Host vagrant-check" in path.read_text()

    assert machine.destroy() == "destroyed"
    assert machine.status() == "not_created"
