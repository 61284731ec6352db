"""Issue the shared certificate from Pebble by DNS-01, install it, verify it.

Everything runs on loopback. Pebble (Debian's package) resolves through a
DNS server written here with dnslib, which reads TXT records from the moto
Route53 zone, so the challenge record really goes through Route53's API. A
local nginx receives the certificate through the install script lab boxes
get.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import boto3
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from moto import mock_aws

from fleet import certs

DOMAIN = "api.vatrates.test"
PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.pebble,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not Path(PEBBLE).exists(), reason="pebble is not installed"),
]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_pair() -> int:
    """Return a port free for both TCP and UDP (the DNS server binds both)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


def make_cert(subject: str, key, issuer_cert=None, issuer_key=None, *,
              ca: bool = False, names: list[str] | None = None,
              addresses: list[str] | None = None) -> x509.Certificate:
    import ipaddress

    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names or []]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses or []]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans),
                                        critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def route53(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        client = boto3.client("route53", region_name="us-east-1")
        zone = client.create_hosted_zone(Name="vatrates.test", CallerReference="t")
        yield client, zone["HostedZone"]["Id"].split("/")[-1]


class Route53Resolver(BaseResolver):
    """Resolver that returns the TXT records of the moto Route53 zone."""

    def __init__(self, zone_id: str) -> None:
        self.zone_id = zone_id
        self.client = boto3.client("route53", region_name="us-east-1")
        self.lock = threading.Lock()
        self.queries: list[str] = []
        self.serve_txt = True  # False stands in for a zone that is not delegated

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).lower()
        self.queries.append(f"{qname} {QTYPE[request.q.qtype]}")
        if request.q.qtype != QTYPE.TXT or not self.serve_txt:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        with self.lock:
            page = self.client.list_resource_record_sets(
                HostedZoneId=self.zone_id, StartRecordName=qname,
                StartRecordType="TXT", MaxItems="1")
        for record in page["ResourceRecordSets"]:
            if record["Name"].lower() != qname or record["Type"] != "TXT":
                continue
            for value in record["ResourceRecords"]:
                text = value["Value"].strip('"')
                reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(text),
                                    ttl=record["TTL"]))
        if not reply.rr:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture
def dns_server(route53):
    _, zone_id = route53
    resolver = Route53Resolver(zone_id)
    port = free_port_pair()
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data")
    servers = [DNSServer(resolver, port=port, address="127.0.0.1", tcp=tcp,
                         logger=quiet)
               for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    yield port, resolver
    for server in servers:
        server.stop()


@pytest.fixture
def listener_ca(tmp_path):
    """A CA for Pebble's own HTTPS listener (the package ships none)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_cert("vatfleet test listener CA", ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert("localhost", leaf_key, ca, ca_key, names=["localhost"],
                     addresses=["127.0.0.1"])
    paths = {"ca": tmp_path / "listener-ca.pem", "cert": tmp_path / "listener.pem",
             "key": tmp_path / "listener.key"}
    paths["ca"].write_bytes(pem(ca))
    paths["cert"].write_bytes(pem(leaf))
    paths["key"].write_bytes(key_pem(leaf_key))
    return paths


@pytest.fixture
def pebble(tmp_path, dns_server, listener_ca):
    dns_port, _ = dns_server
    ports = {"acme": free_port(), "management": free_port()}
    config = {"pebble": {
        "listenAddress": f"127.0.0.1:{ports['acme']}",
        "managementListenAddress": f"127.0.0.1:{ports['management']}",
        "certificate": str(listener_ca["cert"]),
        "privateKey": str(listener_ca["key"]),
        "httpPort": free_port(),
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }}
    config_path = tmp_path / "pebble-config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    log_path = tmp_path / "pebble.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [PEBBLE, "-config", str(config_path), "-dnsserver",
             f"127.0.0.1:{dns_port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    directory = f"https://127.0.0.1:{ports['acme']}/dir"
    try:
        wait_for_https(directory, listener_ca["ca"], process, log_path)
        yield {"directory": directory, "ca": listener_ca["ca"],
               "management": f"https://127.0.0.1:{ports['management']}",
               "log": log_path}
    finally:
        process.terminate()
        process.wait(timeout=10)


def trust(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def wait_for_https(url: str, ca: Path, process, log_path: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"pebble exited: {log_path.read_text()[-2000:]}")
        try:
            httpx.get(url, verify=trust(ca), timeout=2).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within 20 s: {log_path.read_text()[-2000:]}")


NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {domain};
        ssl_certificate {tls}/{domain}.crt;
        ssl_certificate_key {tls}/{domain}.key;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path):
    """nginx on loopback, first serving a placeholder self-signed certificate."""
    prefix = tmp_path / "nginx"
    tls = prefix / "tls"
    tls.mkdir(parents=True)
    placeholder_key = ec.generate_private_key(ec.SECP256R1())
    placeholder = make_cert(DOMAIN, placeholder_key, names=[DOMAIN])
    (tls / f"{DOMAIN}.crt").write_bytes(pem(placeholder))
    (tls / f"{DOMAIN}.key").write_bytes(key_pem(placeholder_key))
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, domain=DOMAIN,
                                      tls=tls))
    base = [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"),
            "-c", str(conf)]
    process = subprocess.Popen([*base, "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process)
        yield {"port": port, "tls": tls, "base": base, "pid": process.pid}
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_for_one_worker(master: int) -> None:
    """Wait until the workers from before a reload have exited.

    Until then an old worker may still accept a connection and serve the
    previous certificate.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if len(children) == 1:
            return
        time.sleep(0.1)
    pytest.fail(f"nginx {master} still had {len(children)} workers after 10 s")


def wait_for_port(port: int, process) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"nginx exited: {process.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nginx did not listen on 127.0.0.1:{port} within 10 s")


def test_issue_install_verify(tmp_path, route53, dns_server, pebble, nginx):
    client, zone_id = route53
    _, resolver = dns_server
    settings = certs.Settings(directory_url=pebble["directory"],
                              cert_dir=tmp_path / "certs",
                              email="ops@vatrates.test",
                              ca_bundle=str(pebble["ca"]),
                              insync_timeout=30, order_timeout=60)

    kept = certs.issue(DOMAIN, settings, client, zone_id)

    # The certificate names the shared name and chains to Pebble's CA.
    chain = x509.load_pem_x509_certificates(kept.fullchain_pem)
    sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == [DOMAIN]
    assert len(chain) >= 2
    chain[0].verify_directly_issued_by(chain[1])
    root_pem = httpx.get(f"{pebble['management']}/roots/0",
                         verify=trust(pebble["ca"]), timeout=5).content
    root = x509.load_pem_x509_certificate(root_pem)
    chain[-1].verify_directly_issued_by(root)

    # The challenge went through Route53 and our DNS server, then was removed.
    assert f"_acme-challenge.{DOMAIN}. TXT" in resolver.queries
    records = client.list_resource_record_sets(HostedZoneId=zone_id)
    assert [r for r in records["ResourceRecordSets"] if r["Type"] == "TXT"] == []

    # Kept on disk with its dates; the key is readable by its owner only.
    again = certs.load_kept(settings.cert_dir, DOMAIN)
    assert again is not None
    assert again.fingerprint == kept.fingerprint
    assert not again.is_due(settings.renew_days)
    key_file = certs.cert_paths(settings.cert_dir, DOMAIN)["key"]
    assert key_file.stat().st_mode & 0o777 == 0o600
    meta = json.loads(certs.cert_paths(settings.cert_dir, DOMAIN)["meta"].read_text())
    assert meta["not_after"] == kept.not_after.isoformat()

    # Before installing, the box serves another certificate: verify fails.
    before = certs.verify("local-nginx", "127.0.0.1", nginx["port"], DOMAIN,
                          kept.fingerprint, wait=0)
    assert not before.ok

    base = " ".join(shlex.quote(part) for part in nginx["base"])
    script = certs.nginx_script(DOMAIN, tls_dir=str(nginx["tls"]),
                                reload=f"{base} -s reload", sudo="",
                                test=f"{base} -t -q")
    certs.install(kept, script, certs.local_runner(), "local-nginx")

    after = certs.verify("local-nginx", "127.0.0.1", nginx["port"], DOMAIN,
                         kept.fingerprint, wait=10)
    assert after.ok, after.detail
    assert (nginx["tls"] / f"{DOMAIN}.key").stat().st_mode & 0o777 == 0o600


def test_second_issue_reuses_account(tmp_path, route53, dns_server, pebble):
    client, zone_id = route53
    settings = certs.Settings(directory_url=pebble["directory"],
                              cert_dir=tmp_path / "certs",
                              ca_bundle=str(pebble["ca"]),
                              insync_timeout=30, order_timeout=60)

    first = certs.issue(DOMAIN, settings, client, zone_id)
    key_path = certs.account_key_path(settings.cert_dir, settings.directory_url)
    account_key = key_path.read_bytes()
    second = certs.issue(DOMAIN, settings, client, zone_id)

    assert key_path.read_bytes() == account_key
    assert second.fingerprint != first.fingerprint
    assert certs.load_kept(settings.cert_dir, DOMAIN).fingerprint == second.fingerprint


def test_untrusted_directory_rejected(tmp_path, route53, pebble):
    client, zone_id = route53
    settings = certs.Settings(directory_url=pebble["directory"],
                              cert_dir=tmp_path / "certs")
    with pytest.raises(certs.CertificateError) as raised:
        certs.issue(DOMAIN, settings, client, zone_id)
    assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)
    assert "--ca-bundle" in str(raised.value)


def pebble_settings(tmp_path: Path, pebble: dict) -> certs.Settings:
    return certs.Settings(directory_url=pebble["directory"],
                          cert_dir=tmp_path / "certs",
                          ca_bundle=str(pebble["ca"]),
                          insync_timeout=30, order_timeout=60)


def local_target(nginx: dict) -> certs.BoxTarget:
    base = " ".join(shlex.quote(part) for part in nginx["base"])
    script = certs.nginx_script(DOMAIN, tls_dir=str(nginx["tls"]),
                                reload=f"{base} -s reload", sudo="",
                                test=f"{base} -t -q")
    return certs.BoxTarget("local-nginx", "nginx", "127.0.0.1", nginx["port"],
                           script, certs.local_runner())


def test_scheduled_renewal_acts_when_needed(tmp_path, route53, dns_server, pebble,
                                            nginx):
    client, zone_id = route53
    settings = pebble_settings(tmp_path, pebble)
    target = local_target(nginx)

    def zone():
        return client, zone_id

    first = certs.ensure(DOMAIN, settings, zone, [target], only_where_needed=True)
    assert first.issued
    assert first.ok, first.boxes[0].verdict.detail
    assert first.boxes[0].action == "installed (nginx)"
    wait_for_one_worker(nginx["pid"])

    # Not due and already served: nothing is issued or installed.
    second = certs.ensure(DOMAIN, settings, zone, [target], only_where_needed=True)
    assert not second.issued
    assert second.kept.fingerprint == first.kept.fingerprint
    assert second.boxes[0].action == "already served"
    assert second.ok

    # A box that drifted gets the kept certificate again.
    placeholder_key = ec.generate_private_key(ec.SECP256R1())
    (nginx["tls"] / f"{DOMAIN}.crt").write_bytes(
        pem(make_cert(DOMAIN, placeholder_key, names=[DOMAIN])))
    (nginx["tls"] / f"{DOMAIN}.key").write_bytes(key_pem(placeholder_key))
    subprocess.run([*nginx["base"], "-s", "reload"], check=True, timeout=10)
    wait_for_one_worker(nginx["pid"])
    placeholder_served = certs.verify(
        "local-nginx", "127.0.0.1", nginx["port"], DOMAIN,
        certs.fingerprint_of_der(x509.load_pem_x509_certificate(
            (nginx["tls"] / f"{DOMAIN}.crt").read_bytes()).public_bytes(
                serialization.Encoding.DER)), wait=10)
    assert placeholder_served.ok, placeholder_served.detail
    drifted = certs.ensure(DOMAIN, settings, zone, [target], only_where_needed=True)
    assert not drifted.issued
    assert drifted.boxes[0].action == "installed (nginx)"
    assert drifted.ok, drifted.boxes[0].verdict.detail

    # Fewer days left than the renewal threshold: a new certificate.
    settings.renew_days = int(first.kept.days_left()) + 1
    due = certs.ensure(DOMAIN, settings, zone, [target], only_where_needed=True)
    assert due.issued
    assert "fewer than" in due.reason
    assert due.kept.fingerprint != first.kept.fingerprint
    assert due.ok, due.boxes[0].verdict.detail


def test_certs_task_issues_then_keeps(tmp_path, route53, dns_server, pebble, capsys):
    from invoke import Context

    from fleet.cli.dns import certs as certs_task

    config = tmp_path / "regions.toml"
    config.write_text(LAB_FLEET)
    options = {"config": str(config), "directory": pebble["directory"],
               "ca_bundle": str(pebble["ca"]), "cert_dir": str(tmp_path / "certs")}

    certs_task(Context(), **options)
    first = capsys.readouterr().out
    assert f"Issued certificate for {DOMAIN}" in first
    assert "lab-one" in first  # skipped: the box has no ssh-config yet

    certs_task(Context(), renew_if_due=True, **options)
    assert f"Kept certificate for {DOMAIN}" in capsys.readouterr().out


LAB_FLEET = f"""
[project]
name = "vatrates"
domain = "{DOMAIN}"
primary = "lab-one"

[regions.lab-one]
provider = "docker"
hostname = "lab-one.vatrates.test"
roles = ["base", "nginx"]
ssh_port = 2291
http_port = 8291
https_port = 8491
"""


def test_failed_validation_cleans_up(tmp_path, route53, dns_server, pebble):
    client, zone_id = route53
    _, resolver = dns_server
    resolver.serve_txt = False
    settings = pebble_settings(tmp_path, pebble)

    with pytest.raises(certs.CertificateError) as raised:
        certs.issue(DOMAIN, settings, client, zone_id)

    assert DOMAIN in str(raised.value)
    assert f"_acme-challenge.{DOMAIN}. TXT" in resolver.queries
    records = client.list_resource_record_sets(HostedZoneId=zone_id)
    assert [r for r in records["ResourceRecordSets"] if r["Type"] == "TXT"] == []
    assert certs.load_kept(settings.cert_dir, DOMAIN) is None
