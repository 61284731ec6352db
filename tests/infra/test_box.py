"""Checks every box passes after `invoke build`, run with testinfra over SSH.

Checks that only make sense under Dokku are skipped in the lab with the
reason, never passed; the lab runs its stand-in checks instead.
"""

from __future__ import annotations

import json
import re
import shlex
import time

import pytest

from fleet import nginx_policy

CURL = "curl -sS --max-time 10 -k"


def wait_for(check, timeout: float, interval: float = 1.0):
    """Call check() until it returns a truthy value or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def app_url(box, path: str) -> str:
    """Return curl arguments that reach the app through nginx on this box."""
    name = box.region.hostname or "localhost"
    return (f"--resolve {shlex.quote(name)}:443:127.0.0.1 "
            f"{shlex.quote(f'https://{name}{path}')}")


def sudo(host, command: str):
    # -n: a missing sudo rule fails at once instead of waiting for a password.
    return host.run(f"sudo -n {command}")


def nginx_v(host) -> str:
    # /usr/sbin is not on a login user's PATH on Debian.
    result = host.run("/usr/sbin/nginx -v")
    assert result.rc == 0, result.stderr
    # nginx prints its version on stderr.
    return result.stderr or result.stdout


# ----- nginx and TLS -----------------------------------------------------------

def test_nginx_version_meets_policy(host, box):
    output = nginx_v(host)
    package = host.run("dpkg-query -W -f='${Version}' nginx").stdout.strip()
    assert nginx_policy.matches_pin(package, box.region.nginx_pin), (
        f"nginx {package} does not match nginx_pin {box.region.nginx_pin!r}")

    expected = "on" if nginx_policy.http2_allowed(output, box.region.nginx_floor) \
        else "off"
    recorded = host.file("/etc/vatfleet/nginx-http2").content_string.strip()
    assert recorded == expected, f"{output.strip()} with floor " \
        f"{box.region.nginx_floor}: provision decided {recorded}, policy says {expected}"


def test_nginx_running(host):
    assert host.service("nginx").is_running
    assert sudo(host, "nginx -t").rc == 0


def test_alpn_negotiates_h2_on_443(host, box):
    if not nginx_policy.http2_allowed(nginx_v(host), box.region.nginx_floor):
        pytest.skip(f"nginx is below the HTTP/2 floor {box.region.nginx_floor}, so "
                    "the policy keeps HTTP/2 off")
    name = shlex.quote(box.region.hostname or "localhost")
    result = host.run(f"openssl s_client -alpn h2 -connect 127.0.0.1:443 "
                      f"-servername {name} </dev/null 2>&1 | grep -a 'ALPN'")
    # The session dump contains binary bytes, so grep -a picks the ALPN line.
    assert "ALPN protocol: h2" in result.stdout, result.stdout


def test_post_over_h2_reaches_app(host, box):
    """A POST with a body goes through nginx over HTTP/2 to the app.

    The API has no POST route, so the app itself answers 405 in its JSON
    error format; nginx errors (400, 502) would be HTML and fail here.
    """
    if not nginx_policy.http2_allowed(nginx_v(host), box.region.nginx_floor):
        pytest.skip("HTTP/2 is off under the nginx floor")
    result = host.run(
        f"{CURL} --http2 -X POST -H 'Content-Type: application/json' "
        f"--data '{{\"probe\": true}}' -o /tmp/vatfleet-post.json "
        f"-w '%{{http_version}} %{{http_code}} %{{content_type}}' "
        f"{app_url(box, '/v1/rates')}"
    )
    assert result.rc == 0, result.stderr
    version, status, content_type = result.stdout.split(" ", 2)
    assert version == "2"
    assert int(status) < 500, result.stdout
    assert content_type.startswith("application/json"), result.stdout


def test_certificate_served(host, box):
    name = shlex.quote(box.region.hostname or "localhost")
    result = host.run(
        f"openssl s_client -connect 127.0.0.1:443 -servername {name} </dev/null "
        f"2>/dev/null | openssl x509 -noout -subject -enddate -checkend 86400"
    )
    assert result.rc == 0, f"no certificate, or it expires within a day: " \
        f"{result.stdout}{result.stderr}"
    assert "notAfter=" in result.stdout


# ----- services ------------------------------------------------------------------

def test_docker_running(host, dokku_only):
    assert host.service("docker").is_running


def test_lab_services_running(host, box, lab_only):
    assert host.service("redis-server").is_running
    assert host.run("redis-cli -h 127.0.0.1 ping").stdout.strip() == "PONG"
    if box.hosts_primary:
        assert host.service("pouchdb-server").is_running
        assert host.run("curl -fsS --max-time 5 http://127.0.0.1:5984/").rc == 0
    live = host.file("/srv/vatfleet/live").content_string.split()
    assert live, "no release is live"
    assert host.service(f"vatfleet-web@{live[0]}").is_running


def test_lab_app_environment(host, box, lab_only):
    text = sudo(host, "cat /etc/vatfleet/app.env").stdout
    settings = dict(line.split("=", 1) for line in text.splitlines()
                    if "=" in line and not line.startswith("#"))
    assert settings.get("REGION") == box.region.name
    assert settings.get("REDIS_URL", "").startswith("redis://")
    assert re.match(r"^https?://[^/]+/[a-z_][a-z0-9_$()+/-]*$",
                    settings.get("COUCHDB_URL", "")), "COUCHDB_URL names no database"


def test_docker_log_caps(host, box):
    if box.is_lab and not host.exists("dockerd"):
        pytest.skip("not applicable in the lab: Docker is not installed in lab "
                    "boxes (the app runs under systemd)")
    settings = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert settings.get("log-driver") == "json-file"
    assert settings.get("log-opts", {}).get("max-size")
    assert settings.get("log-opts", {}).get("max-file")


def test_dokku_app_deployed(host, box, dokku_only):
    app = shlex.quote(box.fleet.project.name)
    result = host.run(f"dokku ps:report {app} --running")
    assert result.stdout.strip() == "true", result.stdout + result.stderr


def test_dokku_plugins_installed(host, box, dokku_only):
    plugins = host.run("dokku plugin:list").stdout
    wanted = ["letsencrypt", "redis"] + (["couchdb"] if box.hosts_primary else [])
    for name in wanted:
        assert re.search(rf"\b{name}\b", plugins), f"plugin {name} missing"


def test_dokku_services_linked(host, box, dokku_only):
    app = shlex.quote(box.fleet.project.name)
    config = host.run(f"dokku config:keys {app}").stdout
    assert "REDIS_URL" in config
    assert "COUCHDB_URL" in config


def test_firewall_allows_only_web_and_ssh(host):
    rules = sudo(host, "nft list table inet vatfleet").stdout
    assert "policy drop" in rules
    ports = re.search(r"tcp dport \{ ([0-9, ]+) \} accept", rules)
    assert ports is not None, rules
    assert {p.strip() for p in ports.group(1).split(",")} == {"22", "80", "443"}


# ----- disk and cleanup --------------------------------------------------------

def test_cleanup_cron_installed(host):
    cron = host.file("/etc/cron.d/vatfleet-cleanup")
    assert cron.exists
    assert "/usr/local/sbin/vatfleet-cleanup" in cron.content_string


def test_cleanup_dry_run_passes(host):
    result = sudo(host, "/usr/local/sbin/vatfleet-cleanup --dry-run")
    assert result.rc == 0, result.stderr
    assert "cleanup: done" in result.stdout


def test_root_disk_under_threshold(host, box):
    used = host.run("df --output=pcent / | tail -n 1").stdout.strip().rstrip("%")
    assert int(used) < box.region.disk_alert_percent, (
        f"root disk {used}% used, alert at {box.region.disk_alert_percent}%")


# ----- access ------------------------------------------------------------------

def test_sshd_rejects_password_login(host):
    settings = sudo(host, "sshd -T").stdout
    assert "passwordauthentication no" in settings
    assert "kbdinteractiveauthentication no" in settings
    # Ask the server itself which methods it offers an unknown user.
    probe = host.run(
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 "
        "-o PreferredAuthentications=password -o PubkeyAuthentication=no "
        "vatfleet-probe@127.0.0.1 true 2>&1; echo exit=$?"
    )
    assert "exit=0" not in probe.stdout
    assert "Permission denied (publickey)" in probe.stdout, probe.stdout


def test_passwordless_sudo(host):
    assert host.run("sudo -n true").rc == 0


# ----- the app -------------------------------------------------------------------

def app_ready(host, box) -> bool:
    result = host.run(f"{CURL} -o /dev/null -w '%{{http_code}}' "
                      f"{app_url(box, '/readyz')}")
    return result.stdout.strip() == "200"


def test_app_answers_through_nginx(host, box):
    assert app_ready(host, box)
    result = host.run(f"{CURL} {app_url(box, '/v1/rates/DE')}")
    assert json.loads(result.stdout)["standard_rate"] == 19.0


def test_reboot_routing_unit_enabled(host):
    assert host.service("vatfleet-routing").is_enabled


def test_app_answers_after_restart(host, box):
    if box.is_lab:
        live = host.file("/srv/vatfleet/live").content_string.split()
        before = host.run(f"systemctl show -p MainPID --value vatfleet-web@{live[0]}")
        assert sudo(host, f"systemctl restart vatfleet-web@{live[0]}").rc == 0
        after = host.run(f"systemctl show -p MainPID --value vatfleet-web@{live[0]}")
        assert before.stdout != after.stdout, "the app process did not restart"
        # What runs at boot: nginx must follow the running release.
        assert sudo(host, "systemctl restart vatfleet-routing").rc == 0
    else:
        app = shlex.quote(box.fleet.project.name)
        assert sudo(host, f"dokku ps:restart {app}").rc == 0
    assert wait_for(lambda: app_ready(host, box), timeout=90), \
        "the app did not answer through nginx within 90 s of its restart"
