"""Drive Vagrant for one region's machine, and parse what Vagrant prints.

The Vagrant machine name is the region name and lives in boxes/<region>/.
Every command passes `--provider` explicitly where Vagrant accepts it, and
`vagrant ssh-config NAME` is asked per machine, because the output for several
machines at once gives no safe way to tell their blocks apart.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import vagrant as python_vagrant

from fleet.errors import VagrantError
from fleet.regions import Region

if TYPE_CHECKING:
    from fleet.pipeline import StepContext

# Vagrant provider per region provider. Scaleway servers are created through
# the Instance API and then handed to Vagrant as existing hosts through the
# `managed` provider (the vagrant-managed-servers plugin); see fleet.scaleway.
VAGRANT_PROVIDERS = {
    "aws": "aws",
    "scaleway": "managed",
    "virtualbox": "virtualbox",
    "docker": "docker",
}

# Vagrant's machine-readable output escapes commas inside a field with this
# marker, and newlines as a literal backslash-n (Vagrant docs, "Machine
# Readable Output").
VAGRANT_COMMA = "%!(VAGRANT_COMMA)"
COMMAND_TIMEOUT = 60.0
UP_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Row:
    """One line of `--machine-readable` output: timestamp,target,type,data..."""

    timestamp: int
    target: str
    type: str
    data: tuple[str, ...]


def _unescape(field: str) -> str:
    return field.replace(VAGRANT_COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")


def parse_machine_readable(text: str) -> list[Row]:
    """Parse Vagrant's machine-readable output into rows.

    A row has at least four comma-separated fields; some types carry more
    (`action` rows have five: timestamp,target,action,NAME,start|end), so all
    fields after the type are kept as `data`. Lines that are not rows (plain
    text some plugins print) are skipped.
    """
    rows: list[Row] = []
    for line in text.splitlines():
        fields = line.rstrip("\r").split(",")
        if len(fields) < 4 or not fields[0].isdigit() or not fields[2]:
            continue
        data = tuple(_unescape(f) for f in fields[3:])
        rows.append(Row(int(fields[0]), fields[1], fields[2], data))
    return rows


def parse_ssh_config(text: str) -> dict[str, dict[str, str]]:
    """Parse `vagrant ssh-config` output into {host: {option: value}}.

    Options keep Vagrant's spelling (HostName, Port, IdentityFile). A repeated
    option keeps its first value, as ssh itself does.
    """
    hosts: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip().strip('"')
        if key.lower() == "host":
            current = hosts.setdefault(value, {})
            continue
        if current is None:
            raise VagrantError(f"ssh-config line {line!r} comes before any Host line")
        current.setdefault(key, value)
    return hosts


class Machine:
    """The Vagrant machine of one region."""

    def __init__(self, region: Region, ctx: StepContext | None = None) -> None:
        self.region = region
        self.ctx = ctx
        self.root = region.box_dir
        self.provider = VAGRANT_PROVIDERS[region.provider]

    @property
    def vagrantfile(self) -> Path:
        return self.root / "Vagrantfile"

    def up(self) -> str:
        """Create or start the machine; return a note for the summary table."""
        self._require_vagrantfile()
        before = self.status()
        self._vagrant(["up", self.region.name, "--provider", self.provider,
                       "--no-provision"], timeout=UP_TIMEOUT)
        return "already running" if before == "running" else f"was {before}, now up"

    def status(self) -> str:
        """Return Vagrant's state name: running, not_created, stopped, ..."""
        if not self.vagrantfile.exists():
            return "not_rendered"
        output = self._vagrant(["status", self.region.name, "--machine-readable"])
        for row in parse_machine_readable(output):
            if row.type == "state" and row.target == self.region.name and row.data:
                return row.data[0]
        raise VagrantError(
            f"vagrant status {self.region.name} printed no state row; see "
            f"{self.vagrantfile} and run it by hand to check"
        )

    def destroy(self) -> str:
        """Destroy the machine; return a note. Nothing happens if never rendered."""
        if not self.vagrantfile.exists():
            return "nothing to destroy"
        self._vagrant(["destroy", self.region.name, "--force"], timeout=UP_TIMEOUT)
        return "destroyed"

    def ssh_config(self) -> dict[str, str]:
        """Return this machine's ssh options, from `vagrant ssh-config NAME`."""
        text = self.ssh_config_text()
        hosts = parse_ssh_config(text)
        if self.region.name not in hosts:
            raise VagrantError(
                f"vagrant ssh-config {self.region.name} printed no Host "
                f"{self.region.name} block (hosts: {', '.join(hosts) or 'none'})"
            )
        return hosts[self.region.name]

    def ssh_config_text(self) -> str:
        self._require_vagrantfile()
        return self._vagrant(["ssh-config", self.region.name])

    def ssh_config_path(self) -> Path:
        """Write boxes/<region>/ssh-config for ssh -F and testinfra; return it."""
        text = self.ssh_config_text()
        if self.region.name not in parse_ssh_config(text):
            raise VagrantError(
                f"vagrant ssh-config {self.region.name} printed no Host block for it"
            )
        path = self.root / "ssh-config"
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)
        return path

    def validate(self) -> str:
        """Run `vagrant validate` in the machine's directory."""
        self._require_vagrantfile()
        return self._vagrant(["validate"])

    # ----- running vagrant --------------------------------------------------

    def _require_vagrantfile(self) -> None:
        if not self.vagrantfile.exists():
            raise VagrantError(
                f"{self.vagrantfile} not found; run "
                f"`invoke render --region {self.region.name}` first"
            )

    def _vagrant(self, args: list[str], timeout: float = COMMAND_TIMEOUT) -> str:
        executable = python_vagrant.get_vagrant_executable()
        if not executable:
            raise VagrantError("vagrant not found on PATH; install it (scripts/setup "
                               "does) and try again")
        argv = [executable, *args]
        env = vagrant_env()
        if self.ctx is not None and self.ctx.run_id:
            # Read by the rendered Vagrantfile for the cloud "run" tag.
            env["VATFLEET_RUN"] = self.ctx.run_id

        if self.ctx is not None:
            result = self.ctx.run(argv, cwd=self.root, env=env, timeout=timeout)
            return result.stdout

        try:
            result = subprocess.run(
                argv, cwd=self.root, env={**os.environ, **env}, text=True,
                capture_output=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired:
            raise VagrantError(
                f"vagrant {' '.join(args)} timed out after {timeout:.0f} s in "
                f"{self.root}"
            ) from None
        if result.returncode != 0:
            message = (result.stderr.strip() or result.stdout.strip())[-500:]
            raise VagrantError(
                f"vagrant {' '.join(args)} failed in {self.root} "
                f"(exit {result.returncode}): {message}"
            )
        return result.stdout


def vagrant_env() -> dict[str, str]:
    """Return environment settings for every Vagrant run.

    The version check is switched off because it calls HashiCorp's server on
    every command, and colour codes would end up in the logs.
    """
    return {"VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1"}
