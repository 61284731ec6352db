"""The `provision` step: upload provision/ to a box and run its role steps.

The scripts travel as one tarball over scp. It also carries the region's
settings in `files/settings.env`, the operator keys named in regions.toml,
and the CA certificates this machine trusts. Settings go in a file because
the primary database URL can hold a password and command lines end up in
logs. Each script prints `changed=N` last. The step's note sums them, so a
second run reads "no change".
"""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.vagrant import Machine, parse_ssh_config

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PROVISION_DIR = REPO_ROOT / "provision"
REMOTE_DIR = "/var/lib/vatfleet/provision"
REMOTE_BUNDLE = "/tmp/vatfleet-provision.tar.gz"
STEP_TIMEOUT = 1800.0
LAB_ROLE = "lab-services"
POUCHDB_PORT = 5984
LAB_DATABASE = "users"
# How long a lab box waits for the lab primary that a parallel build of the
# same fleet is still provisioning.
PRIMARY_WAIT = 1200.0
_CHANGED_LINE = re.compile(r"^changed=(\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class Remote:
    """How to reach one box over SSH: its ssh-config file and host name."""

    config: Path
    host: str
    user: str

    def ssh(self, command: str) -> list[str]:
        """Return an ssh argv that runs `command` (one shell string) on the box."""
        return ["ssh", "-F", str(self.config), "-o", "ConnectTimeout=20",
                "-o", "BatchMode=yes", self.host, command]

    def scp(self, local: Path, remote: str) -> list[str]:
        return ["scp", "-q", "-F", str(self.config), "-o", "BatchMode=yes",
                str(local), f"{self.host}:{remote}"]


def remote_for(ctx: Any) -> Remote:
    """Write the region's ssh-config through Vagrant and return its Remote."""
    path = Machine(ctx.region, ctx).ssh_config_path().resolve()
    hosts = parse_ssh_config(path.read_text(encoding="utf-8"))
    options = hosts.get(ctx.region.name, {})
    return Remote(path, ctx.region.name, options.get("User", "root"))


def steps_for(region: Any) -> list[str]:
    """Return the provisioning scripts to run, in order, for a region.

    Docker (lab) boxes also run lab-services, the stand-in for what Dokku's
    plugins provide, right after nginx (or first if nginx is not a role).
    """
    steps = list(region.roles)
    if region.provider == "docker" and LAB_ROLE not in steps:
        position = steps.index("nginx") + 1 if "nginx" in steps else 0
        steps.insert(position, LAB_ROLE)
    missing = [s for s in steps if not (PROVISION_DIR / f"{s}.sh").is_file()]
    if missing:
        raise FleetError(
            f"region {region.name}: no provision/{missing[0]}.sh for role "
            f"{missing[0]!r}; fix `roles` in the config or add the script"
        )
    return steps


def hosts_primary(fleet: Any, region: Any) -> bool:
    """Tell whether this box runs the primary database.

    A lab box whose fleet keeps its primary in the cloud runs its own
    (PouchDB Server), because lab boxes cannot reach cloud boxes.
    """
    if region.is_primary:
        return True
    primary = fleet.regions.get(fleet.project.primary)
    return region.provider == "docker" and (
        primary is None or primary.provider != "docker"
    )


# Debian's and Ubuntu's system CA bundle, used when no variable names one.
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def extra_ca_bundle() -> Path | None:
    """Return the CA bundle this machine trusts, to carry into the box.

    The box installs only the certificates its own Mozilla set lacks, such
    as the CA of a TLS-inspecting proxy, so npm and pip inside the box trust
    what this machine trusts.
    """
    for variable in ("VATFLEET_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                     "NODE_EXTRA_CA_CERTS"):
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return SYSTEM_CA_BUNDLE if SYSTEM_CA_BUNDLE.is_file() else None


def settings_for(ctx: Any, remote: Remote) -> dict[str, str]:
    """Return the environment the provisioning scripts read."""
    fleet, region = ctx.fleet, ctx.region
    primary = hosts_primary(fleet, region)
    settings = {
        "VATFLEET_REGION": region.name,
        "VATFLEET_PROVIDER": region.provider,
        "VATFLEET_HOSTNAME": region.hostname,
        "VATFLEET_DOMAIN": fleet.project.domain,
        "VATFLEET_APP": fleet.project.name,
        "VATFLEET_HOSTS_PRIMARY": "1" if primary else "0",
        "VATFLEET_DB_PEERS": " ".join(db_peers(ctx)) if region.is_primary else "",
        "VATFLEET_LOGIN_USER": remote.user,
        "NGINX_PIN": region.nginx_pin,
        "NGINX_FLOOR": region.nginx_floor,
        "DISK_ALERT_PERCENT": str(region.disk_alert_percent),
    }
    if not primary:
        url = primary_database_url(ctx)
        if url:
            settings["VATFLEET_COUCHDB_URL"] = url
    return settings


def db_peers(ctx: Any) -> list[str]:
    """Return who may reach the primary's database port: the other boxes.

    Lab boxes reach each other over Docker's default bridge network, so the
    lab opens the port to that subnet; cloud boxes are named by hostname.
    """
    others = [r for r in ctx.fleet.regions.values() if r.name != ctx.region.name]
    if not others:
        return []
    if ctx.region.provider == "docker":
        result = ctx.run(
            ["docker", "network", "inspect", "bridge", "--format",
             "{{range .IPAM.Config}}{{.Subnet}} {{end}}"],
            check=False, timeout=30,
        )
        return [s for s in result.stdout.split() if "." in s]
    return [r.hostname for r in others if r.hostname]


def primary_database_url(ctx: Any) -> str:
    """Return COUCHDB_URL for a box that does not run the primary itself.

    Lab boxes take boxes/<region>/couchdb_url when the multi-box lab wrote
    one, else read the admin password and address from the lab primary box,
    waiting for it while a parallel build provisions it. Cloud boxes take
    FLEET_COUCHDB_URL from the environment.
    """
    fleet, region = ctx.fleet, ctx.region
    primary = fleet.regions.get(fleet.project.primary)
    if region.provider != "docker" or primary is None or primary.provider != "docker":
        return os.environ.get("FLEET_COUCHDB_URL", "")

    # `invoke multilab-up` writes this file (mode 0600) so that the box reaches
    # the primary through a delaying link, standing in for distance.
    override = region.box_dir / "couchdb_url"
    if override.is_file():
        return override.read_text(encoding="utf-8").strip()

    deadline = time.monotonic() + PRIMARY_WAIT
    while True:
        settings = read_lab_primary(ctx, primary)
        if settings is not None:
            password, address = settings
            # NOTE: the address is the primary container's address on the
            # Docker bridge, which can change when that container is
            # recreated; provisioning this box again picks up the new one.
            return f"http://admin:{password}@{address}:{POUCHDB_PORT}/{LAB_DATABASE}"
        if time.monotonic() >= deadline:
            raise FleetError(
                f"box {primary.name} had no primary database within "
                f"{PRIMARY_WAIT:.0f} s; build it first: "
                f"invoke build --config {fleet.path} --region {primary.name}"
            )
        time.sleep(10)


def read_lab_primary(ctx: Any, primary: Any) -> tuple[str, str] | None:
    """Read the lab primary's admin password and address, or None if not ready.

    This runs outside ctx.run on purpose: ctx.run copies output into the
    step log, and the output is a password.
    """
    from fleet.pipeline import StepContext

    probe = StepContext(ctx.fleet, primary, ctx.log_path, ctx.keep, ctx.step,
                        ctx.run_id)
    try:
        primary_remote = remote_for(probe)
    except FleetError as error:
        ctx.log(f"# primary {primary.name} not reachable yet: {error}")
        return None
    argv = primary_remote.ssh("sudo cat /etc/vatfleet/couchdb-admin && hostname -I")
    ctx.log(f"$ {shlex.join(argv)}  (output not logged: it holds a password)")
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                check=False)
    except subprocess.TimeoutExpired:
        return None
    lines = result.stdout.split("\n")
    if result.returncode != 0 or len(lines) < 2 or not lines[1].split():
        ctx.log(f"# primary {primary.name} has no database admin yet "
                f"(exit {result.returncode})")
        return None
    return lines[0].strip(), lines[1].split()[0]


def operator_keys(ctx: Any) -> bytes:
    """Read the operator public keys file named in the config."""
    path = ctx.fleet.project.operator_keys
    if path.is_file():
        return path.read_bytes()
    if ctx.region.provider == "docker":
        log.info("event=no_operator_keys region=%s path=%s", ctx.region.name, path)
        return b""
    raise FleetError(
        f"operator keys file {path} not found (operator_keys in "
        f"{ctx.fleet.path}); create it with one public key per line"
    )


def build_bundle(ctx: Any, settings: dict[str, str], target: Path) -> None:
    """Write provision/ plus settings, keys and CA bundle as a gzip tarball."""
    def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o600
        archive.addfile(info, io.BytesIO(data))

    env_text = "".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items())
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(PROVISION_DIR.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.add(path, arcname=str(path.relative_to(PROVISION_DIR)))
        add_bytes(archive, "files/settings.env", env_text.encode())
        add_bytes(archive, "files/operators.pub", operator_keys(ctx))
        bundle = extra_ca_bundle()
        if bundle is not None:
            add_bytes(archive, "files/extra-ca.pem", bundle.read_bytes())


def upload(ctx: Any, remote: Remote, settings: dict[str, str]) -> None:
    """Copy the bundle to the box and unpack it, readable by root only."""
    with tempfile.TemporaryDirectory(prefix="vatfleet-provision.") as tmp:
        bundle = Path(tmp) / "provision.tar.gz"
        build_bundle(ctx, settings, bundle)
        ctx.run(remote.scp(bundle, REMOTE_BUNDLE), timeout=300)
    remote_dir = shlex.quote(REMOTE_DIR)
    ctx.run(remote.ssh(
        f"sudo rm -rf {remote_dir} && sudo install -d -m 700 {remote_dir} && "
        f"sudo tar -xzf {REMOTE_BUNDLE} -C {remote_dir} --no-same-owner && "
        f"rm -f {REMOTE_BUNDLE}"
    ), timeout=300)


def run_script(ctx: Any, remote: Remote, step: str) -> int:
    """Run one provisioning script on the box; return its change count."""
    script = shlex.quote(f"{REMOTE_DIR}/{step}.sh")
    result = ctx.run(remote.ssh(f"sudo bash {script}"), timeout=STEP_TIMEOUT)
    counts = _CHANGED_LINE.findall(result.stdout)
    if not counts:
        raise FleetError(
            f"provision/{step}.sh on {ctx.region.name} printed no changed=N line; "
            f"see {ctx.log_path}"
        )
    return int(counts[-1])


def run(ctx: Any) -> str:
    """Upload provision/ and run the region's role steps; return a summary."""
    steps = steps_for(ctx.region)
    remote = remote_for(ctx)
    upload(ctx, remote, settings_for(ctx, remote))

    changes: dict[str, int] = {}
    for step in steps:
        changes[step] = run_script(ctx, remote, step)
        log.info("event=provisioned region=%s step=%s changed=%d",
                 ctx.region.name, step, changes[step])
    total = sum(changes.values())
    if total == 0:
        return "no change"
    detail = ", ".join(f"{name} {count}" for name, count in changes.items() if count)
    noun = "change" if total == 1 else "changes"
    return f"{total} {noun} ({detail})"
