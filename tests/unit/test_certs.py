"""The certificate's bookkeeping and install scripts, without an ACME server."""

from __future__ import annotations

import datetime as dt
import io
import os
import tarfile
import textwrap

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet import certs
from fleet.regions import load

DOMAIN = "api.vatrates.test"


def self_signed(days_left: float) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_renewal_reason_by_days_left():
    settings = certs.Settings(renew_days=30)
    fresh = certs.describe(DOMAIN, *self_signed(60))
    expiring = certs.describe(DOMAIN, *self_signed(10))

    assert certs.renewal_reason(fresh, settings, force=False) is None
    assert "fewer than 30" in certs.renewal_reason(expiring, settings, force=False)
    assert certs.renewal_reason(None, settings, force=False) == "no certificate kept yet"
    assert certs.renewal_reason(fresh, settings, force=True) == "--force given"


def test_saved_certificate_reads_back(tmp_path):
    kept = certs.describe(DOMAIN, *self_signed(60))
    certs.save_kept(tmp_path, kept, "https://acme.test/dir")

    again = certs.load_kept(tmp_path, DOMAIN)
    assert again.fingerprint == kept.fingerprint
    assert again.not_after == kept.not_after
    paths = certs.cert_paths(tmp_path, DOMAIN)
    assert paths["key"].stat().st_mode & 0o777 == 0o600
    assert certs.load_kept(tmp_path, "other.vatrates.test") is None


def test_broken_chain_names_file(tmp_path):
    paths = certs.cert_paths(tmp_path, DOMAIN)
    paths["chain"].parent.mkdir(parents=True)
    paths["chain"].write_text("not a certificate\n")
    paths["key"].write_text("not a key\n")
    with pytest.raises(certs.CertificateError, match="fullchain.pem"):
        certs.load_kept(tmp_path, DOMAIN)


def test_account_key_kept_per_directory(tmp_path):
    first = certs.load_account_key(tmp_path, "https://a.test/dir")
    again = certs.load_account_key(tmp_path, "https://a.test/dir")
    other = certs.load_account_key(tmp_path, "https://b.test/dir")

    assert first.thumbprint() == again.thumbprint()
    assert first.thumbprint() != other.thumbprint()
    path = certs.account_key_path(tmp_path, "https://a.test/dir")
    assert path.stat().st_mode & 0o777 == 0o600


def test_bundle_has_chain_and_key():
    kept = certs.describe(DOMAIN, *self_signed(60))
    with tarfile.open(fileobj=io.BytesIO(certs.bundle(kept))) as archive:
        names = archive.getnames()
        crt = archive.extractfile("server.crt").read()
        key = archive.getmember("server.key")
    assert names == ["server.crt", "server.key"]
    assert crt == kept.fullchain_pem
    assert key.mode == 0o600


FAKE_DOKKU = """#!/bin/sh
# Dokku's command line as far as the install script uses it: certs:report
# prints the ssl-enabled flag, certs:add and certs:update read a tar.
state="$FAKE_DOKKU_DIR/enabled"
echo "$*" >> "$FAKE_DOKKU_DIR/calls"
case "$1" in
  certs:report) if [ -f "$state" ]; then echo true; else echo false; fi ;;
  certs:add|certs:update)
    mkdir -p "$FAKE_DOKKU_DIR/$1" && tar -x -C "$FAKE_DOKKU_DIR/$1" -f -
    touch "$state" ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"""


def test_dokku_script_adds_then_updates(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dokku"
    fake.write_text(FAKE_DOKKU)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOKKU_DIR", str(tmp_path))
    kept = certs.describe(DOMAIN, *self_signed(60))
    script = certs.dokku_script("vatrates", sudo="")

    certs.install(kept, script, certs.local_runner(), "fake-dokku")
    certs.install(kept, script, certs.local_runner(), "fake-dokku")

    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == [
        "certs:report vatrates --ssl-enabled", "certs:add vatrates",
        "certs:report vatrates --ssl-enabled", "certs:update vatrates",
    ]
    assert (tmp_path / "certs:add" / "server.crt").read_bytes() == kept.fullchain_pem
    assert (tmp_path / "certs:update" / "server.key").read_bytes() == kept.key_pem


def test_failed_install_reports_output(tmp_path):
    kept = certs.describe(DOMAIN, *self_signed(60))
    with pytest.raises(certs.CertificateError, match="exit 3.*disk full"):
        certs.install(kept, "cat >/dev/null; echo 'disk full' >&2; exit 3",
                      certs.local_runner(), "box-1")


def test_nginx_script_quotes_paths():
    script = certs.nginx_script("api.vatrates.test", tls_dir="/etc/nginx/my tls")
    assert "'/etc/nginx/my tls/api.vatrates.test.key'" in script
    assert "sudo systemctl reload nginx" in script


LAB = """
[project]
name = "vatrates"
domain = "api.vatrates.test"
primary = "dokku-box"

[regions.dokku-box]
provider = "docker"
hostname = "one.vatrates.test"
ssh_port = 2291
http_port = 8291
https_port = 8491

[regions.nginx-box]
provider = "docker"
hostname = "two.vatrates.test"
roles = ["base", "nginx"]
ssh_port = 2292
http_port = 8292
https_port = 8492

[regions.bare-box]
provider = "docker"
hostname = "three.vatrates.test"
roles = ["base"]
ssh_port = 2293
http_port = 8293
https_port = 8493
"""


def test_box_targets_by_role(tmp_path):
    path = tmp_path / "regions.toml"
    path.write_text(textwrap.dedent(LAB))
    fleet = load(path)
    for name in ("dokku-box", "nginx-box"):
        fleet.regions[name].box_dir.mkdir(parents=True)
        (fleet.regions[name].box_dir / "ssh-config").write_text(f"Host {name}\n")
    addresses = {name: ["127.0.0.1"] for name in fleet.regions}

    targets, skipped = certs.box_targets(fleet, list(fleet.regions.values()),
                                         addresses, "vatrates")

    kinds = {t.region: t.kind for t in targets}
    assert kinds == {"dokku-box": "dokku", "nginx-box": "nginx"}
    ports = {t.region: t.port for t in targets}
    assert ports == {"dokku-box": 8491, "nginx-box": 8492}
    assert "dokku certs:add vatrates" in targets[0].script
    assert "/etc/nginx/tls/api.vatrates.test.crt" in targets[1].script
    assert len(skipped) == 1
    assert skipped[0].startswith("bare-box")
