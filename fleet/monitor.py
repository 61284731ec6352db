"""Check every box directly at its own address, never through DNS.

A monitor that follows the shared name only ever sees the box DNS picks for
it, so a box that died in another region goes unnoticed. Each check here
connects to one box's own address, sends the shared name as the TLS server
name (SNI) and as the HTTP Host header, and reads:

- reachability and the latency of `GET /readyz`,
- the `/readyz` body: `ready`, `lag_seconds`, `docs_read`, `last_error`,
- root disk use over SSH (`df -P /`) with the box's ssh-config,
- the days left on the certificate the box serves for the shared name.

All boxes are checked at once, each with its own time limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import ssl
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_CERT_DAYS = 14


@dataclass
class Target:
    """One box to check, with the address the monitor connects to."""

    region: str
    host: str | None  # None: no manifest or ssh-config names an address yet
    port: int
    server_name: str
    disk_alert_percent: int = 80
    ssh_config: Path | None = None
    ssh_host: str | None = None
    ca_file: Path | None = None
    verify_chain: bool = False


@dataclass
class Result:
    """Findings of one check on one box. `problems` is empty on a healthy box."""

    region: str
    address: str
    checked_at: str
    reachable: bool = False
    status: int | None = None
    latency_ms: float | None = None
    ready: bool | None = None
    lag_seconds: float | None = None
    docs_read: int | None = None
    last_error: str | None = None
    disk_percent: int | None = None
    disk_note: str | None = None
    cert_days: float | None = None
    cert_not_after: str | None = None
    cert_names: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["healthy"] = self.healthy
        return data


# Reading the box's address


def read_ssh_config(path: Path) -> dict[str, str]:
    """Parse the first Host block of an ssh-config file (keys lower-cased)."""
    settings: dict[str, str] = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or parts[0].startswith("#"):
            continue
        key, value = parts[0].lower(), parts[1].strip().strip('"')
        if key == "host":
            if "host" in settings:
                break
            settings["host"] = value
        elif key not in settings:
            settings[key] = value
    return settings


def read_endpoints(path: Path | None) -> dict[str, tuple[str, int]]:
    """Read a JSON object that maps region names to "host:port" overrides.

    The multi-box lab writes one so that checks go through its delaying
    proxies, the way a distant client would reach each box.
    """
    if path is None:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot read endpoints file {path}: {error}; expected a JSON object "
            'such as {"lab-west": "127.0.0.1:9443"}'
        ) from error
    endpoints = {}
    for region, value in raw.items():
        host, _, port = str(value).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"invalid endpoint {value!r} for region {region} in {path}: "
                "expected HOST:PORT"
            )
        endpoints[region] = (host, int(port))
    return endpoints


def _manifest_address(box_dir: Path) -> str | None:
    """Return the public address fleet.manifest recorded for a cloud box."""
    path = box_dir / "manifest.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("address"):
        return str(data["address"])
    for resource in data.get("resources", []):
        if resource.get("kind") in ("instance", "server") and resource.get("address"):
            return str(resource["address"])
    return None


def target_for(
    fleet: Any,
    region: Any,
    endpoints: dict[str, tuple[str, int]] | None = None,
    ca_file: Path | None = None,
) -> Target:
    """Build the check target of one region from its box files.

    Lab boxes are reached at the ssh-config HostName on the forwarded HTTPS
    port; cloud boxes at the public address in their manifest, on port 443.
    """
    ssh_config = Path(region.box_dir) / "ssh-config"
    ssh = read_ssh_config(ssh_config) if ssh_config.exists() else {}
    if region.provider == "docker":
        host = ssh.get("hostname", "127.0.0.1")
        port = int(region.https_port)
    else:
        host = _manifest_address(Path(region.box_dir)) or ssh.get("hostname")
        port = 443
    if endpoints and region.name in endpoints:
        host, port = endpoints[region.name]
    return Target(
        region=region.name,
        host=host,
        port=port,
        server_name=fleet.project.domain,
        disk_alert_percent=int(region.disk_alert_percent),
        ssh_config=ssh_config if ssh_config.exists() else None,
        ssh_host=ssh.get("host", region.name),
        ca_file=ca_file,
        verify_chain=region.provider != "docker" or ca_file is not None,
    )


# The checks


def _tls_context(target: Target) -> ssl.SSLContext:
    if not target.verify_chain:
        # A bare context: loading the system CA store only to ignore it costs
        # CPU time that shows up as latency on a busy machine.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = str(target.ca_file) if target.ca_file else None
    return ssl.create_default_context(cafile=cafile)


def certificate_names(cert: x509.Certificate) -> list[str]:
    """Return the DNS names of a certificate's subjectAltName extension."""
    try:
        san = cert.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        )
    except x509.ExtensionNotFound:
        return []
    return san.value.get_values_for_type(x509.DNSName)


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """Tell whether a host name matches a certificate name (one-label wildcard)."""
    name = name.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern == name:
            return True
        if pattern.startswith("*.") and name.split(".", 1)[-1] == pattern[2:]:
            return True
    return False


async def fetch_certificate(
    target: Target, timeout: float
) -> x509.Certificate:
    """Open a TLS connection with the shared name as SNI; return the leaf cert."""
    context = _tls_context(target)
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(
            target.host,
            target.port,
            ssl=context,
            server_hostname=target.server_name,
        ),
        timeout,
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return x509.load_der_x509_certificate(der)


async def check_certificate(
    target: Target, result: Result, timeout: float, cert_days: float
) -> None:
    try:
        cert = await fetch_certificate(target, timeout)
    except ssl.SSLCertVerificationError as error:
        result.problems.append(f"certificate not trusted: {error.verify_message}")
        return
    except (TimeoutError, OSError, ssl.SSLError) as error:
        result.problems.append(f"TLS handshake failed: {_describe(error)}")
        return

    not_after = cert.not_valid_after_utc
    days = (not_after - datetime.now(UTC)).total_seconds() / 86400
    result.cert_days = round(days, 1)
    result.cert_not_after = not_after.isoformat()
    result.cert_names = certificate_names(cert)
    if not name_matches(target.server_name, result.cert_names):
        result.problems.append(
            f"certificate does not name {target.server_name} "
            f"(names: {', '.join(result.cert_names) or 'none'})"
        )
    if days < cert_days:
        result.problems.append(
            f"certificate expires in {days:.1f} days (alert under {cert_days:g})"
        )


async def check_readyz(target: Target, result: Result, timeout: float) -> None:
    url = f"https://{_url_host(target.host)}:{target.port}/readyz"
    headers = {"Host": target.server_name, "Accept": "application/json"}
    extensions = {"sni_hostname": target.server_name}
    async with httpx.AsyncClient(
        verify=_tls_context(target), timeout=timeout, trust_env=False
    ) as client:
        started = time.perf_counter()
        try:
            response = await client.get(url, headers=headers, extensions=extensions)
        except httpx.HTTPError as error:
            result.problems.append(f"unreachable: {_describe(error)}")
            return
        result.latency_ms = round((time.perf_counter() - started) * 1000, 1)

    result.reachable = True
    result.status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        # The app nests the sync progress under "sync"; a flat body also works.
        progress = body.get("sync") if isinstance(body.get("sync"), dict) else body
        result.ready = bool(body.get("ready"))
        result.lag_seconds = _number(progress.get("lag_seconds"))
        result.docs_read = progress.get("docs_read")
        result.last_error = progress.get("last_error")
    if response.status_code != 200:
        result.problems.append(f"/readyz returned HTTP {response.status_code}")
    if result.ready is not True:
        result.problems.append("not ready: /readyz does not report ready=true")


def parse_df(output: str) -> int:
    """Return the use percentage of the last line of `df -P` output."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"unexpected df output: {output!r}")
    capacity = lines[-1].split()[4]
    if not capacity.endswith("%"):
        raise ValueError(f"unexpected df capacity {capacity!r} in {lines[-1]!r}")
    return int(capacity[:-1])


def disk_command(target: Target) -> list[str] | None:
    """Return the ssh argv that runs `df -P /` on the box, or None without config."""
    if target.ssh_config is None:
        return None
    return [
        "ssh",
        "-F",
        str(target.ssh_config),
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        target.ssh_host or target.region,
        "df -P /",
    ]


async def run_command(argv: list[str], timeout: float) -> str:
    """Run argv, return its stdout; raise RuntimeError on failure or timeout."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"timed out after {timeout:g} s: {shlex.join(argv)}")
    if process.returncode != 0:
        message = stderr.decode(errors="replace").strip().splitlines()
        last = message[-1] if message else "no output"
        raise RuntimeError(f"exit {process.returncode}: {last}")
    return stdout.decode(errors="replace")


async def check_disk(
    target: Target,
    result: Result,
    timeout: float,
    argv: list[str] | None = None,
) -> None:
    argv = argv or disk_command(target)
    if argv is None:
        result.disk_note = "not checked: no ssh-config for this box"
        return
    try:
        result.disk_percent = parse_df(await run_command(argv, timeout))
    except (RuntimeError, ValueError, OSError) as error:
        result.disk_note = f"not read: {error}"
        result.problems.append(f"disk use unknown: {error}")
        return
    if result.disk_percent > target.disk_alert_percent:
        result.problems.append(
            f"disk {result.disk_percent}% used, over the alert threshold of "
            f"{target.disk_alert_percent}%"
        )


async def check_box(
    target: Target,
    timeout: float = DEFAULT_TIMEOUT,
    cert_days: float = DEFAULT_CERT_DAYS,
    disk_argv: list[str] | None = None,
) -> Result:
    """Run every check on one box at once; never take longer than `timeout`."""
    result = Result(
        region=target.region,
        address=f"{target.host}:{target.port}",
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if not target.host:
        result.problems.append(
            f"no address known for box {target.region}: no manifest or ssh-config "
            "in its box folder; build it first (invoke build)"
        )
        return result

    checks = asyncio.gather(
        check_readyz(target, result, timeout),
        check_certificate(target, result, timeout, cert_days),
        check_disk(target, result, timeout, disk_argv),
    )
    try:
        # A small margin lets each check report its own timeout first.
        await asyncio.wait_for(checks, timeout + 2)
    except TimeoutError:
        result.problems.append(f"checks timed out after {timeout:g} s")

    # An unreachable box also fails the other checks, and its first problem
    # names the cause.
    log.info(
        "event=box_checked region=%s address=%s healthy=%s latency_ms=%s "
        "problems=%d",
        result.region,
        result.address,
        result.healthy,
        result.latency_ms,
        len(result.problems),
    )
    return result


async def check_all(
    targets: list[Target],
    timeout: float = DEFAULT_TIMEOUT,
    cert_days: float = DEFAULT_CERT_DAYS,
) -> list[Result]:
    """Check all boxes in parallel, results in the order of `targets`."""
    return list(
        await asyncio.gather(*(check_box(t, timeout, cert_days) for t in targets))
    )


def run(
    targets: list[Target],
    timeout: float = DEFAULT_TIMEOUT,
    cert_days: float = DEFAULT_CERT_DAYS,
) -> list[Result]:
    """Check all boxes from synchronous code."""
    return asyncio.run(check_all(targets, timeout, cert_days))


# Output


def to_json(results: list[Result]) -> str:
    """Render results for machines: overall health and one object per box."""
    payload = {
        "healthy": all(r.healthy for r in results),
        "boxes": [r.to_dict() for r in results],
    }
    return json.dumps(payload, indent=2)


def to_table(results: list[Result]) -> Any:
    """Render results for people as a rich table."""
    from rich.table import Table

    table = Table(title="Boxes, checked at their own addresses")
    for column in ("region", "address", "status", "latency", "ready", "lag",
                   "disk", "cert days", "problems"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.region,
            r.address,
            "[green]healthy[/]" if r.healthy else "[red]UNHEALTHY[/]",
            _show(r.latency_ms, "{:.0f} ms"),
            _show(r.ready, "{}"),
            _show(r.lag_seconds, "{:.1f} s"),
            _show(r.disk_percent, "{}%") if r.disk_note is None else "n/a",
            _show(r.cert_days, "{:.0f}"),
            "; ".join(r.problems),
        )
    return table


def _show(value: Any, template: str) -> str:
    return "-" if value is None else template.format(value)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _describe(error: BaseException) -> str:
    if isinstance(error, (asyncio.TimeoutError, httpx.TimeoutException)):
        return "timed out"
    text = str(error) or type(error).__name__
    return text
