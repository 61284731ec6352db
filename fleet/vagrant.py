"""Drive Vagrant for one region's machine, and parse what Vagrant prints.

The Vagrant machine name is the region name and lives in boxes/<region>/.
Every command passes `--provider` explicitly where Vagrant accepts it, and
`vagrant ssh-config NAME` is asked per machine, because the output for several
machines at once gives no safe way to tell their blocks apart.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
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
DOCKER_PS_TIMEOUT = 10.0
REASON_LIMIT = 300

# Vagrant's ForwardPortCollision text (templates/locales/en.yml), with its line
# breaks folded into spaces.
PORT_IN_USE = re.compile(r"forwarded port to (\d+) is already in use")
# A published port in `docker ps` output: "127.0.0.1:2222->22/tcp".
PUBLISHED_PORT = re.compile(r":(\d+)->")


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


def error_reason(stdout: str, stderr: str) -> str:
    """Return the part of a failed Vagrant run's output that states the cause.

    With --machine-readable, that is the `error-exit` row's message, else the
    first `ui,error` row. In human output it is the first paragraph on stderr,
    where Vagrant prints its error block; the lines after it list remedies,
    so the last line of output rarely names the cause.
    """
    rows = parse_machine_readable(stdout + "\n" + stderr)
    texts = [row.data[1] for row in rows
             if row.type == "error-exit" and len(row.data) > 1]
    texts += [row.data[1] for row in rows
              if row.type == "ui" and len(row.data) > 1 and row.data[0] == "error"]
    if texts:
        text = texts[0]
    else:
        plain = "\n".join(line for line in stderr.splitlines()
                          if not parse_machine_readable(line))
        # Vagrant prints its error block on stderr. Without one, stdout's
        # progress lines end where the run stopped.
        text = plain.strip() or (stdout.strip().splitlines() or [""])[-1]
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    first = " ".join(paragraphs[0].split()) if paragraphs else ""
    return first[:REASON_LIMIT]


def published_ports(docker_ps: str) -> dict[int, str]:
    """Map host ports to container names, from `docker ps` NAMES<TAB>PORTS."""
    holders: dict[int, str] = {}
    for line in docker_ps.splitlines():
        name, _, ports = line.partition("\t")
        for port in PUBLISHED_PORT.findall(ports):
            holders.setdefault(int(port), name.strip())
    return holders


def docker_port_holders() -> dict[int, str]:
    """Return {host port: container name} from `docker ps`; {} if it fails."""
    try:
        result = subprocess.run(
            ["docker", "ps", "--format", "{{.Names}}\t{{.Ports}}"],
            capture_output=True, text=True, timeout=DOCKER_PS_TIMEOUT, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return published_ports(result.stdout) if result.returncode == 0 else {}


def explain_failure(region: Region, stdout: str, stderr: str,
                    holders: dict[int, str] | None = None) -> str:
    """Return the reason a Vagrant run failed, with the fix where one is known.

    A forwarded-port collision names the regions.toml key that set the port
    and, when `docker ps` shows one, the container that publishes it.
    `holders` replaces the `docker ps` call in tests.
    """
    reason = error_reason(stdout, stderr)
    match = PORT_IN_USE.search(" ".join((stdout + " " + stderr).split()))
    if match is None:
        return reason
    port = int(match.group(1))
    key = next((k for k in ("ssh_port", "http_port", "https_port")
                if getattr(region, k, 0) == port), "its port")
    change = f"change {key} in regions.toml"
    if holders is None:
        holders = docker_port_holders()
    holder = holders.get(port)
    if holder:
        return (f"port {port} is held by container {holder}; destroy it from the "
                f"checkout that built it, or {change}")
    return (f"port {port} is already in use on this host; stop what listens on "
            f"it, or {change}")


# Vagrant rejects a second command on a machine while one runs ("machine is
# locked"), which happens when parallel steps of other regions read that
# machine (the lab primary's settings, for example). Commands on one machine
# from this process therefore run one at a time.
_machine_locks: dict[tuple[Path, str], threading.Lock] = {}
_machine_locks_guard = threading.Lock()


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
        """Destroy the machine and return a note; skip one never rendered or created."""
        if not self.vagrantfile.exists():
            return "nothing to destroy"
        if self.status() == "not_created":
            return "not created"
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

    def _lock(self) -> threading.Lock:
        key = (self.root.resolve(), self.region.name)
        with _machine_locks_guard:
            return _machine_locks.setdefault(key, threading.Lock())

    def _vagrant(self, args: list[str], timeout: float = COMMAND_TIMEOUT) -> str:
        with self._lock():
            return self._run_vagrant(args, timeout)

    def _run_vagrant(self, args: list[str], timeout: float) -> str:
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
            result = self.ctx.run(argv, cwd=self.root, env=env, timeout=timeout,
                                  check=False)
            if result.returncode != 0:
                from fleet.pipeline import StepFailed

                raise StepFailed(
                    self.ctx.step, self.region.name, self.ctx.log_path,
                    f"vagrant {' '.join(args[:2])} exited with {result.returncode}: "
                    f"{explain_failure(self.region, result.stdout, result.stderr)}",
                )
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
            message = explain_failure(self.region, result.stdout, result.stderr)
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
