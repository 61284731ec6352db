"""Tests for fleet.vagrant: machine-readable output, ssh-config, the wrapper."""

from __future__ import annotations

import os
import stat
import threading
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
  up) [ -s "{tmp_path}/fail" ] && {{ cat "{tmp_path}/fail" >&2; exit 1; }}
      [ -f "{tmp_path}/fail" ] && {{ echo boom >&2; exit 3; }} ;;
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


COLLISION = """\
Vagrant cannot forward the specified ports on this VM, since they
would collide with some other application that is already listening
on these ports. The forwarded port to 2222 is already in use
on the host machine.

To fix this, modify your current project's Vagrantfile to use another
port. Example, where '1234' would be replaced by a unique host port:

  config.vm.network :forwarded_port, guest: 22, host: 1234

try 'vagrant reload' (equivalent of running a halt followed by an up)
so vagrant can attempt to auto-correct this upon booting. Be warned
that any unsaved work might be lost.
"""


def test_error_reason_prefers_error_exit_row():
    stdout = (
        "1,,ui,info,Bringing machine...\n"
        "2,,ui,error,The provider could not start.\n"
        "3,,error-exit,Vagrant::Errors::ProviderNotUsable,The provider 'docker' "
        "is not usable.\\nIs the engine running?\n"
    )
    assert vagrant.error_reason(stdout, "") == (
        "The provider 'docker' is not usable. Is the engine running?"
    )


def test_error_reason_takes_first_paragraph_of_stderr():
    reason = vagrant.error_reason("==> local: Creating...\n", COLLISION)
    assert reason.startswith("Vagrant cannot forward the specified ports on this")
    assert reason.endswith("is already in use on the host machine.")
    assert "unsaved work" not in reason


def test_published_ports_from_docker_ps():
    listing = ("vatrates-local\t127.0.0.1:2222->22/tcp, 127.0.0.1:8080->80/tcp\n"
               "redis\t6379/tcp\n")
    assert vagrant.published_ports(listing) == {2222: "vatrates-local",
                                                8080: "vatrates-local"}


def test_port_collision_names_container_and_key(machine, fake_vagrant, tmp_path,
                                                monkeypatch):
    from fleet.pipeline import StepContext, StepFailed

    (tmp_path / "fail").write_text(COLLISION)
    monkeypatch.setattr(vagrant, "docker_port_holders",
                        lambda: {2222: "vatrates-local"})
    ctx = StepContext(None, machine.region, tmp_path / "up.log", step="up")
    with pytest.raises(StepFailed) as caught:
        vagrant.Machine(machine.region, ctx).up()
    message = caught.value.message
    assert message.startswith("vagrant up local exited with 1: ")
    assert "port 2222 is held by container vatrates-local" in message
    assert "change ssh_port in regions.toml" in message
    assert "unsaved work" not in message


def test_port_collision_without_docker_holder(machine):
    reason = vagrant.explain_failure(machine.region, "", COLLISION, holders={})
    assert reason == ("port 2222 is already in use on this host; stop what "
                      "listens on it, or change ssh_port in regions.toml")


def test_destroy_of_box_never_created(machine, fake_vagrant):
    assert machine.destroy() == "not created"
    assert "destroy" not in fake_vagrant.read_text()


def test_error_reason_without_stderr_uses_last_line():
    stdout = "==> local: Creating the container...\n==> local: Stopped: no disk\n"
    assert vagrant.error_reason(stdout, "") == "==> local: Stopped: no disk"


def test_commands_on_one_machine_do_not_overlap(machine, tmp_path, monkeypatch):
    """Two threads reading one machine wait for each other, as Vagrant needs."""
    bin_dir = tmp_path / "locking-bin"
    bin_dir.mkdir()
    lock_dir = tmp_path / "machine.lock"
    script = bin_dir / "vagrant"
    # Like Vagrant, the script fails at once while another command holds the
    # machine's lock.
    script.write_text(f"""#!/bin/sh
mkdir "{lock_dir}" 2>/dev/null || {{ echo "machine is locked" >&2; exit 1; }}
sleep 0.3
cat "{tmp_path}/ssh-config.out"
rmdir "{lock_dir}"
""")
    script.chmod(0o755)
    (tmp_path / "ssh-config.out").write_text(MULTI_SSH_CONFIG)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    other = vagrant.Machine(machine.region)
    errors: list[Exception] = []

    def read(target: vagrant.Machine) -> None:
        try:
            target.ssh_config_text()
        except VagrantError as error:
            errors.append(error)

    threads = [threading.Thread(target=read, args=(m,)) for m in (machine, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert errors == []
