"""Start and stop the multi-box lab's network (proxies and resolver).

`up()` lays out the spec from `lab/multibox.toml` and `lab/labnet.toml`,
starts `python -m fleet.labnet` in the background and waits until the
resolver answers. State lives in `.lab/multibox/`: `labnet.json` (spec),
`endpoints.json` (front proxies, for `invoke monitor --endpoints`),
`status.json` (box health as the resolver sees it), `labnet.pid`, `labnet.log`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from fleet import labnet
from fleet.errors import FleetError
from fleet.regions import REPO_ROOT

log = logging.getLogger(__name__)

STATE_DIR = REPO_ROOT / ".lab" / "multibox"
NET_CONFIG = REPO_ROOT / "lab" / "labnet.toml"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class LabNetError(FleetError):
    """The lab network could not be started or stopped."""


def _docker(*args: str) -> str:
    try:
        done = subprocess.run(["docker", *args], capture_output=True, text=True,
                              timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or error
        raise LabNetError(
            f"docker {' '.join(args)} failed: {str(detail).strip()}; is the "
            "Docker engine running (scripts/setup starts it)?"
        ) from error
    return done.stdout.strip()


def bridge_gateway() -> str:
    """Return the host's address on Docker's default bridge network.

    Docker 20.10 may leave `Gateway` out of the default bridge's IPAM
    config; the engine then uses the first host address of the subnet.
    """
    config = json.loads(_docker("network", "inspect", "bridge", "-f",
                                "{{json (index .IPAM.Config 0)}}"))
    if config.get("Gateway"):
        return config["Gateway"]
    if not config.get("Subnet"):
        raise LabNetError(
            f"Docker's bridge network has neither a gateway nor a subnet ({config}); "
            "check `docker network inspect bridge`"
        )
    network = ipaddress.ip_network(config["Subnet"], strict=False)
    return str(next(network.hosts()))


def container_id(fleet: Any, region: Any) -> str:
    """Return the Docker container of a region's box (Vagrant's id file first)."""
    id_file = Path(region.box_dir) / ".vagrant" / "machines" / region.name / \
        "docker" / "id"
    if id_file.exists():
        return id_file.read_text().strip()
    return f"{fleet.project.name}-{region.name}"


def container_address(fleet: Any, region: Any) -> str | None:
    """Return the box's address on the bridge, or None if it is not running."""
    try:
        address = _docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}",
                          container_id(fleet, region))
    except LabNetError:
        return None
    return address or None


def primary_region(fleet: Any) -> Any:
    return fleet.regions[fleet.project.primary]


# NOTE: these mirror provision/lab-services.sh (admin user, password file,
# database name); change them together.
PRIMARY_ADMIN_FILE = "/etc/vatfleet/couchdb-admin"
PRIMARY_DATABASE = "users"


def primary_url_over_ssh(region: Any) -> str | None:
    """Build the primary's database URL from its admin password, over SSH."""
    config = Path(region.box_dir) / "ssh-config"
    if not config.exists():
        return None
    argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o",
            "ConnectTimeout=5", region.name, f"sudo -n cat {PRIMARY_ADMIN_FILE}"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                              check=True)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("event=primary_password_unreadable region=%s error=%s",
                    region.name, type(error).__name__)
        return None
    password = quote(done.stdout.strip(), safe="")
    return f"http://admin:{password}@127.0.0.1:5984/{PRIMARY_DATABASE}"


def write_couchdb_overrides(fleet: Any, spec: dict[str, Any]) -> list[Path]:
    """Point each non-primary box's COUCHDB_URL at its delaying link.

    Reads the primary's `couchdb_url` file (written by the deploy step) and
    writes `couchdb_url` next to each other box with the link's host and
    port. Returns the files written; none when the primary has no such file.
    """
    source = Path(primary_region(fleet).box_dir) / "couchdb_url"
    url = source.read_text().strip() if source.exists() else primary_url_over_ssh(
        primary_region(fleet)
    )
    if not url:
        log.info("event=couchdb_override_skipped reason=no_primary_url path=%s",
                 source)
        return []
    primary_url = urlsplit(url)
    written = []
    for proxy in spec["proxies"]:
        if proxy["serve"]:
            continue
        userinfo = primary_url.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{proxy['listen']}" if userinfo else proxy["listen"]
        url = urlunsplit(primary_url._replace(netloc=netloc))
        path = Path(fleet.regions[proxy["region"]].box_dir) / "couchdb_url"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(url + "\n")
        path.chmod(0o600)
        written.append(path)
    return written


def running_pid(state: Path = STATE_DIR) -> int | None:
    """Return the pid of the lab network process if it is still running."""
    pid_file = state / "labnet.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().strip() or 0)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # A reused pid belongs to another program: never signal that one.
    return pid if b"fleet.labnet" in cmdline else None


def up(fleet: Any, net_path: Path = NET_CONFIG, state: Path = STATE_DIR
       ) -> dict[str, Any]:
    """Start the proxies and the resolver; return the spec they run."""
    if running_pid(state):
        raise LabNetError(
            f"the lab network is already running (pid file {state}/labnet.pid); "
            "run `invoke multilab-down` first"
        )
    try:
        net = labnet.read_net_config(net_path)
    except ValueError as error:
        raise LabNetError(str(error)) from error
    primary = container_address(fleet, primary_region(fleet))
    if primary is None:
        log.warning("event=primary_not_running region=%s", fleet.project.primary)
    spec = labnet.lab_spec(fleet, net, bridge_gateway(), primary)

    state.mkdir(parents=True, exist_ok=True)
    (state / "labnet.json").write_text(json.dumps(spec, indent=1))
    (state / "endpoints.json").write_text(
        json.dumps(labnet.front_endpoints(spec), indent=1)
    )
    (state / "status.json").unlink(missing_ok=True)
    overrides = write_couchdb_overrides(fleet, spec)
    (state / "overrides.json").write_text(json.dumps([str(p) for p in overrides]))

    with (state / "labnet.log").open("a") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleet.labnet", str(state / "labnet.json"),
             "--status", str(state / "status.json")],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
            start_new_session=True,
        )
    (state / "labnet.pid").write_text(str(process.pid))
    _wait_for_resolver(spec, process, state)
    log.info("event=labnet_started pid=%d proxies=%d", process.pid,
             len(spec["proxies"]))
    return spec


def _wait_for_resolver(spec: dict[str, Any], process: subprocess.Popen,
                       state: Path) -> None:
    server = labnet.split_address(spec["dns"])
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabNetError(
                f"the lab network exited with code {process.returncode}; see "
                f"{state}/labnet.log (a port in lab/labnet.toml may be in use)"
            )
        try:
            labnet.query(server, spec["domain"], timeout=0.5)
            return
        except OSError:
            time.sleep(0.3)
    raise LabNetError(f"the lab resolver did not answer on {spec['dns']} within "
                      f"{START_TIMEOUT:g} s; see {state}/labnet.log")


def down(state: Path = STATE_DIR) -> bool:
    """Stop the lab network process; return False if none was running."""
    pid = running_pid(state)
    (state / "labnet.pid").unlink(missing_ok=True)
    remove_couchdb_overrides(state)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            log.info("event=labnet_stopped pid=%d", pid)
            return True
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    log.warning("event=labnet_killed pid=%d after_seconds=%g", pid, STOP_TIMEOUT)
    return True


def remove_couchdb_overrides(state: Path = STATE_DIR) -> None:
    """Remove the database URLs that point at links which no longer run."""
    listing = state / "overrides.json"
    if not listing.exists():
        return
    for name in json.loads(listing.read_text()):
        Path(name).unlink(missing_ok=True)
    listing.unlink()


def _is_zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] == "Z"


def status(state: Path = STATE_DIR) -> list[dict[str, Any]]:
    """Return box health as the running resolver last saw it."""
    path = state / "status.json"
    if not running_pid(state) or not path.exists():
        return []
    return json.loads(path.read_text())
