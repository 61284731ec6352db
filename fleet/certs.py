"""One certificate for the shared name, by ACME DNS-01 through Route53.

Behind latency DNS, HTTP-01 validation is unreliable: the CA's validator
may be routed to another region's box, which does not hold the token. A
DNS-01 challenge is answered once, in the hosted zone, for every box.

The account key is kept in the certificate directory (default
`.cache/certs/`, one key per ACME directory URL). Each issuance makes a new
key and CSR and writes the TXT record `_acme-challenge.<name>` with UPSERT.
Once Route53 reports the change INSYNC, the order is finalized and the TXT
record is deleted again. The full chain, the key and their dates
are kept on disk, then installed on every box: `dokku certs:add` (or
`certs:update`) on Dokku boxes, the files nginx reads on lab boxes.

A box's own report is never proof that it serves the certificate: after
installing, the builder connects to each box's address with the shared name
as SNI and compares the served certificate's SHA-256 fingerprint with the
issued one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import shlex
import socket
import ssl
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import FleetError

log = logging.getLogger(__name__)

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
RENEW_DAYS = 30  # renew when fewer days than this remain
TXT_TTL = 60  # seconds
INSYNC_TIMEOUT = 180.0  # seconds to wait for Route53 to publish a change
ORDER_TIMEOUT = 180.0  # seconds for the CA to validate and issue
NGINX_TLS_DIR = "/etc/nginx/tls"  # lab boxes: <dir>/<name>.crt and .key
USER_AGENT = "vatfleet-certs"


class CertificateError(FleetError):
    """Issuing, installing or verifying the shared certificate failed."""


# ----- settings and the kept certificate ------------------------------------


@dataclass
class Settings:
    """ACME directory, certificate directory and renewal settings."""

    directory_url: str = LETS_ENCRYPT
    cert_dir: Path = Path(".cache/certs")
    email: str = ""
    renew_days: int = RENEW_DAYS
    ca_bundle: str | None = None  # trust this CA file for the directory's HTTPS
    insync_timeout: float = INSYNC_TIMEOUT
    order_timeout: float = ORDER_TIMEOUT


@dataclass
class KeptCertificate:
    """The issued certificate (full chain), its key and its dates, as on disk."""

    domain: str
    fullchain_pem: bytes
    key_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str  # SHA-256 of the leaf certificate's DER, hex

    def days_left(self, now: dt.datetime | None = None) -> float:
        """Return the days until expiry, as a fraction."""
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400

    def is_due(self, renew_days: int, now: dt.datetime | None = None) -> bool:
        """Return whether fewer than `renew_days` days remain."""
        return self.days_left(now) < renew_days


def leaf_certificate(fullchain_pem: bytes) -> Any:
    """Return the first certificate of a PEM chain (the leaf)."""
    from cryptography import x509

    return x509.load_pem_x509_certificates(fullchain_pem)[0]


def fingerprint_of_der(der: bytes) -> str:
    """Return the SHA-256 fingerprint of a DER certificate, as hex."""
    return hashlib.sha256(der).hexdigest()


def describe(domain: str, fullchain_pem: bytes, key_pem: bytes) -> KeptCertificate:
    """Read the dates and the fingerprint of an issued chain."""
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = leaf_certificate(fullchain_pem)
    return KeptCertificate(
        domain=domain,
        fullchain_pem=fullchain_pem,
        key_pem=key_pem,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint=fingerprint_of_der(leaf.public_bytes(Encoding.DER)),
    )


def cert_paths(cert_dir: Path, domain: str) -> dict[str, Path]:
    """Return the files one kept certificate uses."""
    base = cert_dir / domain
    return {"chain": base / "fullchain.pem", "key": base / "privkey.pem",
            "meta": base / "cert.json"}


def load_kept(cert_dir: Path, domain: str) -> KeptCertificate | None:
    """Return the kept certificate for `domain`, or None when there is none."""
    paths = cert_paths(cert_dir, domain)
    if not paths["chain"].exists() or not paths["key"].exists():
        return None
    try:
        return describe(domain, paths["chain"].read_bytes(), paths["key"].read_bytes())
    except ValueError as error:
        raise CertificateError(
            f"{paths['chain']}: not a PEM certificate chain ({error}); delete "
            f"{paths['chain'].parent} and run `invoke certs` to issue a new one"
        ) from None


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    temporary.replace(path)


def save_kept(cert_dir: Path, kept: KeptCertificate, directory_url: str) -> None:
    """Write the chain, the key (mode 600) and a JSON file with the dates."""
    paths = cert_paths(cert_dir, kept.domain)
    _write_private(paths["key"], kept.key_pem)
    _write_private(paths["chain"], kept.fullchain_pem)
    meta = {
        "domain": kept.domain,
        "not_before": kept.not_before.isoformat(),
        "not_after": kept.not_after.isoformat(),
        "sha256": kept.fingerprint,
        "directory": directory_url,
        "saved": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write_private(paths["meta"], (json.dumps(meta, indent=2) + "\n").encode())


# ----- ACME account ---------------------------------------------------------


def account_key_path(cert_dir: Path, directory_url: str) -> Path:
    """Return the account key file for one ACME directory URL."""
    digest = hashlib.sha256(directory_url.encode()).hexdigest()[:12]
    return cert_dir / "accounts" / digest / "account.key"


def load_account_key(cert_dir: Path, directory_url: str) -> Any:
    """Return the account's JWK, creating and keeping a new key if none exists."""
    import josepy
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = account_key_path(cert_dir, directory_url)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(path, key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        (path.parent / "directory.txt").write_text(directory_url + "\n")
        log.info("event=account_key_created path=%s", path)
    return josepy.JWKRSA(key=key)


def acme_client(settings: Settings, account_key: Any) -> Any:
    """Return an ACME v2 client with a registered (or found) account."""
    from acme import client, errors, messages

    # requests takes a CA file path where a boolean would switch checks off.
    verify: Any = settings.ca_bundle or True
    network = client.ClientNetwork(account_key, user_agent=USER_AGENT,
                                   verify_ssl=verify)
    directory = client.ClientV2.get_directory(settings.directory_url, network)
    acme = client.ClientV2(directory, network)

    registration = messages.NewRegistration.from_data(
        email=settings.email or None, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as existing:
        network.account = messages.RegistrationResource(
            uri=existing.location, body=messages.Registration())
    return acme


# ----- Route53 TXT records --------------------------------------------------


def change_txt(route53: Any, zone_id: str, action: str, name: str,
               values: list[str]) -> str:
    """Send one TXT change (UPSERT or DELETE) and return the change id."""
    answer = route53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Comment": f"ACME DNS-01 challenge for {name}",
            "Changes": [{
                "Action": action,
                "ResourceRecordSet": {
                    "Name": name,
                    "Type": "TXT",
                    "TTL": TXT_TTL,
                    "ResourceRecords": [{"Value": f'"{v}"'} for v in values],
                },
            }],
        },
    )
    return answer["ChangeInfo"]["Id"]


def wait_insync(route53: Any, change_id: str, timeout: float) -> None:
    """Wait until Route53 reports a change INSYNC on all its name servers."""
    deadline = time.monotonic() + timeout
    while True:
        status = route53.get_change(Id=change_id)["ChangeInfo"]["Status"]
        if status == "INSYNC":
            return
        if time.monotonic() > deadline:
            raise CertificateError(
                f"Route53 change {change_id} still {status} after {timeout:.0f} s; "
                f"check the hosted zone and run `invoke certs` again"
            )
        time.sleep(2)


# ----- issuance -------------------------------------------------------------


def new_private_key_pem() -> bytes:
    """Return a new ECDSA P-256 key for the certificate, as PKCS#8 PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _dns01_challenges(order: Any, domain: str) -> list[Any]:
    from acme import challenges, messages

    pending = []
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            continue
        found = [c for c in authz.body.challenges
                 if isinstance(c.chall, challenges.DNS01)]
        if not found:
            offered = ", ".join(c.chall.typ for c in authz.body.challenges)
            raise CertificateError(
                f"the CA offers no dns-01 challenge for {domain} (offered: "
                f"{offered}); use an ACME server that supports DNS-01"
            )
        pending.append(found[0])
    return pending


def issue(domain: str, settings: Settings, route53: Any, zone_id: str
          ) -> KeptCertificate:
    """Obtain a certificate for `domain` by DNS-01, keep it and return it."""
    from acme import errors as acme_errors
    from acme import messages
    from acme.crypto_util import make_csr
    from requests.exceptions import RequestException

    try:
        account_key = load_account_key(settings.cert_dir, settings.directory_url)
        acme = acme_client(settings, account_key)
        key_pem = new_private_key_pem()
        order = acme.new_order(make_csr(key_pem, [domain]))
        order = _answer_dns01(acme, account_key, order, domain, settings, route53,
                              zone_id)
    except (acme_errors.Error, messages.Error, RequestException) as error:
        raise CertificateError(
            f"ACME request to {settings.directory_url} for {domain} failed: "
            f"{error}; check the directory URL (--directory), the CA file "
            f"(--ca-bundle) and that the zone {zone_id} serves {domain}"
        ) from None

    kept = describe(domain, order.fullchain_pem.encode(), key_pem)
    save_kept(settings.cert_dir, kept, settings.directory_url)
    log.info("event=certificate_issued domain=%s not_after=%s sha256=%s",
             domain, kept.not_after.isoformat(), kept.fingerprint)
    return kept


def _answer_dns01(acme: Any, account_key: Any, order: Any, domain: str,
                  settings: Settings, route53: Any, zone_id: str) -> Any:
    challenges = _dns01_challenges(order, domain)
    names: dict[str, list[str]] = {}
    for challenge in challenges:
        name = challenge.chall.validation_domain_name(domain)
        names.setdefault(name, []).append(challenge.chall.validation(account_key))

    written: list[tuple[str, list[str]]] = []
    try:
        for name, values in names.items():
            change_id = change_txt(route53, zone_id, "UPSERT", name, values)
            written.append((name, values))
            wait_insync(route53, change_id, settings.insync_timeout)
            log.info("event=txt_published name=%s change=%s", name, change_id)

        for challenge in challenges:
            acme.answer_challenge(challenge, challenge.response(account_key))
        deadline = dt.datetime.now() + dt.timedelta(seconds=settings.order_timeout)
        return acme.poll_and_finalize(order, deadline)
    finally:
        for name, values in written:
            _delete_txt(route53, zone_id, name, values)


def _delete_txt(route53: Any, zone_id: str, name: str, values: list[str]) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        change_txt(route53, zone_id, "DELETE", name, values)
        log.info("event=txt_deleted name=%s", name)
    except (BotoCoreError, ClientError) as error:
        # The certificate does not depend on this; report it and go on.
        log.warning("event=txt_delete_failed name=%s error=%s", name, error)


# ----- installing on boxes --------------------------------------------------

# Runs a shell script on a box with bytes on its standard input.
Runner = Callable[[str, bytes], subprocess.CompletedProcess]


def bundle(kept: KeptCertificate) -> bytes:
    """Return a tar with server.crt (full chain) and server.key, as Dokku takes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data, mode in (("server.crt", kept.fullchain_pem, 0o644),
                                 ("server.key", kept.key_pem, 0o600)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def nginx_script(domain: str, tls_dir: str = NGINX_TLS_DIR,
                 reload: str = "systemctl reload nginx", sudo: str = "sudo",
                 test: str = "nginx -t -q") -> str:
    """Return the shell script that installs the tar on stdin for nginx."""
    target = shlex.quote(tls_dir)
    crt = shlex.quote(f"{tls_dir}/{domain}.crt")
    key = shlex.quote(f"{tls_dir}/{domain}.key")
    return "\n".join([
        "set -eu",
        'work=$(mktemp -d)',
        'trap \'rm -rf "$work"\' EXIT',
        'tar -x -C "$work" -f -',
        f"{sudo} install -d -m 0755 {target}",
        f'{sudo} install -m 0644 "$work/server.crt" {crt}',
        f'{sudo} install -m 0600 "$work/server.key" {key}',
        f"{sudo} {test}",
        f"{sudo} {reload}",
    ])


def dokku_script(app: str, sudo: str = "sudo") -> str:
    """Return the shell script that hands the tar on stdin to Dokku."""
    quoted = shlex.quote(app)
    # certs:add fails when the app already has a certificate; certs:update
    # replaces it. Both read the tar (server.crt, server.key) from stdin.
    return "\n".join([
        "set -eu",
        f"if {sudo} dokku certs:report {quoted} --ssl-enabled | grep -qx true; then",
        f"  {sudo} dokku certs:update {quoted}",
        "else",
        f"  {sudo} dokku certs:add {quoted}",
        "fi",
    ])


def ssh_runner(ssh_config: Path, host: str, timeout: float = 120.0) -> Runner:
    """Return a Runner that runs scripts on `host` through `ssh -F ssh_config`."""

    def run(script: str, stdin: bytes) -> subprocess.CompletedProcess:
        argv = ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=15", host, "sh -c " + shlex.quote(script)]
        return subprocess.run(argv, input=stdin, capture_output=True,
                              timeout=timeout, check=False)

    return run


def local_runner(timeout: float = 60.0) -> Runner:
    """Return a Runner that runs scripts on this machine (tests, local nginx)."""

    def run(script: str, stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", script], input=stdin, capture_output=True,
                              timeout=timeout, check=False)

    return run


def install(kept: KeptCertificate, script: str, runner: Runner, where: str) -> None:
    """Run an install script with the certificate tar on its standard input."""
    result = runner(script, bundle(kept))
    if result.returncode != 0:
        output = (result.stderr or result.stdout or b"").decode(errors="replace")
        raise CertificateError(
            f"installing the certificate on {where} failed (exit "
            f"{result.returncode}): {output.strip()[-400:]}"
        )
    log.info("event=certificate_installed box=%s sha256=%s", where, kept.fingerprint)


# ----- verifying what a box serves ------------------------------------------


def served_fingerprint(address: str, port: int, server_name: str,
                       timeout: float = 10.0) -> str:
    """Connect with `server_name` as SNI; return the served leaf's fingerprint."""
    context = ssl.create_default_context()
    # Fetching, not trusting: the fingerprint comparison is the check.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((address, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise CertificateError(f"{address}:{port} sent no certificate")
    return fingerprint_of_der(der)


@dataclass
class Verdict:
    """Result of checking one box: whether it serves the certificate, and why."""

    box: str
    ok: bool
    detail: str


def verify(box: str, address: str, port: int, domain: str, expected: str,
           wait: float = 15.0) -> Verdict:
    """Check that a box serves the expected certificate, retrying up to `wait` s.

    A reload of nginx is asynchronous, so old workers may serve for a moment.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            served = served_fingerprint(address, port, domain)
            detail = f"serves sha256 {served[:16]}..."
            if served == expected:
                return Verdict(box, True, detail)
            detail += f" (expected {expected[:16]}...)"
        except (OSError, CertificateError) as error:
            detail = f"TLS connection to {address}:{port} failed: {error}"
        if time.monotonic() > deadline:
            return Verdict(box, False, detail)
        time.sleep(0.5)


# ----- the whole run --------------------------------------------------------


@dataclass
class BoxTarget:
    """Box that gets the certificate, and the address it is verified at."""

    region: str
    kind: str  # "dokku" or "nginx"
    address: str
    port: int
    script: str
    runner: Runner


def box_targets(fleet: Any, regions: list[Any], addresses: dict[str, list[str]],
                app: str) -> tuple[list[BoxTarget], list[str]]:
    """Return the boxes to install on, and the regions left out with the reason."""
    from fleet.dns import https_port

    targets: list[BoxTarget] = []
    skipped: list[str] = []
    for region in regions:
        if "dokku" in region.roles:
            kind, script = "dokku", dokku_script(app)
        elif "nginx" in region.roles:
            kind, script = "nginx", nginx_script(fleet.project.domain)
        else:
            skipped.append(f"{region.name}: neither the dokku nor the nginx role")
            continue
        found = addresses.get(region.name)
        if not found:
            skipped.append(f"{region.name}: no address known; build the box or "
                           f"pass --address {region.name}=IP")
            continue
        ssh_config = region.box_dir / "ssh-config"
        if not ssh_config.exists():
            skipped.append(f"{region.name}: {ssh_config} is missing; run "
                           f"`invoke up --region {region.name}` first")
            continue
        targets.append(BoxTarget(region.name, kind, found[0], https_port(region),
                                 script, ssh_runner(ssh_config, region.name)))
    return targets, skipped


@dataclass
class BoxResult:
    """Result on one box: the action taken and the external check."""

    region: str
    action: str
    verdict: Verdict


@dataclass
class Outcome:
    """The certificate used, whether it was issued now, and each box's result."""

    kept: KeptCertificate
    issued: bool
    reason: str
    boxes: list[BoxResult]

    @property
    def ok(self) -> bool:
        return all(b.verdict.ok for b in self.boxes)


def renewal_reason(kept: KeptCertificate | None, settings: Settings,
                   force: bool) -> str | None:
    """Return why a new certificate is needed, or None to keep the current one."""
    if force:
        return "--force given"
    if kept is None:
        return "no certificate kept yet"
    days = kept.days_left()
    if kept.is_due(settings.renew_days):
        return f"{days:.1f} days left, fewer than {settings.renew_days}"
    return None


def ensure(domain: str, settings: Settings, route53: Callable[[], tuple[Any, str]],
           targets: list[BoxTarget], *, force: bool = False,
           only_where_needed: bool = False, verify_wait: float = 15.0) -> Outcome:
    """Issue the certificate if due, install it on each box, verify each box.

    `route53` returns (client, zone id) and is called only when a certificate
    is issued. With `only_where_needed` (the scheduled renewal), a box that
    already serves the kept certificate is left alone.
    """
    kept = load_kept(settings.cert_dir, domain)
    reason = renewal_reason(kept, settings, force)
    issued = reason is not None
    if reason is not None:
        client, zone_id = route53()
        kept = issue(domain, settings, client, zone_id)
    else:
        reason = f"kept certificate valid for {kept.days_left():.1f} more days"
    assert kept is not None

    results = []
    for target in targets:
        results.append(_install_and_verify(domain, kept, target, issued,
                                           only_where_needed, verify_wait))
    return Outcome(kept, issued, reason, results)


def _install_and_verify(domain: str, kept: KeptCertificate, target: BoxTarget,
                        issued: bool, only_where_needed: bool,
                        verify_wait: float) -> BoxResult:
    if only_where_needed and not issued:
        current = verify(target.region, target.address, target.port, domain,
                         kept.fingerprint, wait=0)
        if current.ok:
            return BoxResult(target.region, "already served", current)

    try:
        install(kept, target.script, target.runner, target.region)
    except (CertificateError, OSError, subprocess.TimeoutExpired) as error:
        log.error("event=install_failed box=%s error=%s", target.region, error)
        return BoxResult(target.region, "install failed",
                         Verdict(target.region, False, str(error)))
    verdict = verify(target.region, target.address, target.port, domain,
                     kept.fingerprint, wait=verify_wait)
    if not verdict.ok:
        log.error("event=verify_failed box=%s detail=%s", target.region,
                  verdict.detail)
    return BoxResult(target.region, f"installed ({target.kind})", verdict)
