"""Tests for fleet.vagrant: machine-readable output, ssh-config, the wrapper."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fleet import regions, vagrant
from fleet.errors import VagrantError

REPO = Path(__file__).resolve().parents[2]

STATUS = """\
1733300000,,metadata,provider,docker
1733300000,local,provider-name,docker
1733300000,local,state,running
1733300000,local,state-human-short,running
1733300000,local,state-human-long,The container is created and running.%!(VAGRANT_COMMA) You can\\nstop it.
1733300001,local,action,up,start
1733300009,local,action,up,end
1733300009,,ui,info,Current machine states:
not a machine-readable line
"""

MULTI_SSH_CONFIG = """\
Host eu-west-1
  HostName 203.0.113.10
  User ubuntu
  Port 22
  IdentityFile "/home/op/.ssh/vatrates pem"
  IdentitiesOnly yes

Host local
  HostName 127.0.0.1
  User vagrant
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  IdentityFile /repo/.lab/ssh/id_ed25519
  IdentityFile /second/key
"""


def test_rows_keep_all_fields():
    rows = vagrant.parse_machine_readable(STATUS)
    actions = [row for row in rows if row.type == "action"]
    assert [row.data for row in actions] == [("up", "start"), ("up", "end")]
    assert all(row.target == "local" for row in actions)


def test_rows_unescape_commas_and_newlines():
    rows = vagrant.parse_machine_readable(STATUS)
    long = next(row for row in rows if row.type == "state-human-long")
    assert long.data == ("The container is created and running., You can\nstop it.",)


def test_rows_skip_garbage_and_empty_target():
    rows = vagrant.parse_machine_readable(STATUS)
    assert len(rows) == 8
    assert rows[0].target == ""
    assert rows[0].timestamp == 1733300000
    assert rows[0].data == ("provider", "docker")


def test_ssh_config_multi_machine():
    hosts = vagrant.parse_ssh_config(MULTI_SSH_CONFIG)
    assert set(hosts) == {"eu-west-1", "local"}
    assert hosts["local"]["Port"] == "2222"
    assert hosts["local"]["HostName"] == "127.0.0.1"
    assert hosts["eu-west-1"]["User"] == "ubuntu"
    assert hosts["eu-west-1"]["IdentityFile"] == "/home/op/.ssh/vatrates pem"


def test_ssh_config_first_value_wins():
    hosts = vagrant.parse_ssh_config(MULTI_SSH_CONFIG)
    assert hosts["local"]["IdentityFile"] == "/repo/.lab/ssh/id_ed25519"


def test_ssh_config_option_before_host():
    with pytest.raises(VagrantError):
        vagrant.parse_ssh_config("  Port 22\nHost x\n")


@pytest.fixture
def fake_vagrant(tmp_path, monkeypatch):
    """Put a `vagrant` script first on PATH that logs its argv and prints output."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    script = bin_dir / "vagrant"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {log}
echo "VAGRANT_CHECKPOINT_DISABLE=$VAGRANT_CHECKPOINT_DISABLE" >> {log}
case "$1" in
  status) printf '%s\\n' '1,local,state,not_created' ;;
  ssh-config) cat "{tmp_path}/ssh-config.out" ;;
  up) [ -f "{tmp_path}/fail" ] && {{ echo boom >&2; exit 3; }} ;;
esac
exit 0
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "ssh-config.out").write_text(MULTI_SSH_CONFIG)
    return log


@pytest.fixture
def machine(tmp_path):
    config = tmp_path / "regions.toml"
    config.write_text((REPO / "regions.toml").read_text())
    region = regions.load(config).regions["local"]
    region.box_dir.mkdir(parents=True)
    (region.box_dir / "Vagrantfile").write_text("# test\n")
    return vagrant.Machine(region)


def test_machine_up_passes_provider(machine, fake_vagrant):
    note = machine.up()
    lines = fake_vagrant.read_text().splitlines()
    assert "up local --provider docker --no-provision" in lines
    assert "VAGRANT_CHECKPOINT_DISABLE=1" in lines
    assert note == "was not_created, now up"


def test_machine_failure_raises(machine, fake_vagrant, tmp_path):
    (tmp_path / "fail").write_text("")
    with pytest.raises(VagrantError) as caught:
        machine.up()
    assert "exit 3" in str(caught.value)
    assert "boom" in str(caught.value)


def test_machine_ssh_config_path(machine, fake_vagrant):
    path = machine.ssh_config_path()
    assert path == machine.root / "ssh-config"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "ssh-config local" in fake_vagrant.read_text()
    assert machine.ssh_config()["Port"] == "2222"


def test_machine_without_vagrantfile(tmp_path):
    config = tmp_path / "regions.toml"
    config.write_text((REPO / "regions.toml").read_text())
    machine = vagrant.Machine(regions.load(config).regions["local"])
    assert machine.status() == "not_rendered"
    assert machine.destroy() == "nothing to destroy"
    with pytest.raises(VagrantError) as caught:
        machine.up()
    assert "invoke render --region local" in str(caught.value)


def test_provider_per_region():
    fleet = regions.load(REPO / "regions.toml")
    providers = {name: vagrant.Machine(r).provider for name, r in fleet.regions.items()}
    assert providers["eu-west-1"] == "aws"
    assert providers["fr-par-1"] == "managed"
    assert providers["rehearsal"] == "virtualbox"
    assert providers["local"] == "docker"
