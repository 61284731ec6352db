"""X-Forwarded-For counts only when the peer is a trusted proxy."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from starlette.testclient import TestClient
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.main import create_app
from app.settings import Settings

from .servers import REPO, free_port

pytestmark = pytest.mark.redis

FRANCE = "86.224.0.1"
AUSTRIA = "77.118.0.1"


def _country(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["country"]["code"]


def test_untrusted_peer_header_ignored(make_client):
    client = make_client(peer=FRANCE)
    response = client.get("/v1/rates", headers={"X-Forwarded-For": AUSTRIA})
    assert _country(response) == "FR"


def test_trusted_peer_header_used(make_client):
    client = make_client(peer="127.0.0.1")
    response = client.get("/v1/rates", headers={"X-Forwarded-For": AUSTRIA})
    assert _country(response) == "AT"


def test_trusted_ipv6_peer_header_used(make_client):
    client = make_client(peer="::1")
    response = client.get("/v1/rates", headers={"X-Forwarded-For": AUSTRIA})
    assert _country(response) == "AT"


def test_client_spoofed_entry_ignored(make_client):
    # The client sent "X-Forwarded-For: FRANCE"; nginx appended the real
    # address. Only the right-most untrusted entry is the client.
    client = make_client(peer="127.0.0.1")
    response = client.get(
        "/v1/rates", headers={"X-Forwarded-For": f"{FRANCE}, {AUSTRIA}"}
    )
    assert _country(response) == "AT"


def test_trusted_hops_skipped(make_client):
    client = make_client(peer="127.0.0.1", trusted="127.0.0.1,10.1.0.0/16")
    response = client.get(
        "/v1/rates", headers={"X-Forwarded-For": f"{AUSTRIA}, 10.1.2.3"}
    )
    assert _country(response) == "AT"


def test_anonymous_bucket_follows_forwarded_client(make_client):
    client = make_client(peer="127.0.0.1")
    for _ in range(5):
        client.get("/v1/countries", headers={"X-Forwarded-For": FRANCE})
    limited = client.get("/v1/countries", headers={"X-Forwarded-For": FRANCE})
    assert limited.status_code == 429
    other = client.get("/v1/countries", headers={"X-Forwarded-For": AUSTRIA})
    assert other.status_code == 200


def test_untrusted_peer_cannot_pick_bucket(make_client):
    client = make_client(peer=FRANCE)
    statuses = [
        client.get(
            "/v1/countries", headers={"X-Forwarded-For": f"203.0.113.{i}"}
        ).status_code
        for i in range(6)
    ]
    assert statuses == [200] * 5 + [429]


@pytest.mark.parametrize(
    "header", ["not-an-address", f"{AUSTRIA},,", ", ".join([AUSTRIA] * 21)]
)
def test_bad_forwarded_header_gets_400(make_client, header):
    client = make_client(peer="127.0.0.1")
    response = client.get("/v1/rates", headers={"X-Forwarded-For": header})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_forwarded_for"


def _start_and_stop(app) -> None:
    with TestClient(app, client=("127.0.0.1", 40000)):
        pass


def test_uvicorn_proxy_headers_warned(redis_url, app_logs):
    """The startup log warns when uvicorn's ProxyHeadersMiddleware wraps the app."""
    app = create_app(Settings(region="test", redis_url=redis_url))
    _start_and_stop(ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1"))
    warnings = [line for line in app_logs.lines if "event=proxy_headers_on" in line]
    assert len(warnings) == 1
    assert "--no-proxy-headers" in warnings[0]


def test_bare_app_not_warned(redis_url, app_logs):
    _start_and_stop(create_app(Settings(region="test", redis_url=redis_url)))
    assert any(line.startswith("event=start ") for line in app_logs.lines)
    assert not any("event=proxy_headers_on" in line for line in app_logs.lines)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "warned"), [((), True), (("--no-proxy-headers",), False)]
)
def test_real_uvicorn_proxy_headers_warned(redis_url, tmp_path, flags, warned):
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    argv += ["--port", str(free_port()), *flags]
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO)}
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stderr=log_file)
    try:
        deadline = time.monotonic() + 30
        output = ""
        while "event=start " not in output and time.monotonic() < deadline:
            if process.poll() is not None:
                break
            time.sleep(0.1)
            output = log_path.read_text(errors="replace")
    finally:
        process.terminate()
        process.wait(15)
    assert "event=start " in output
    assert ("event=proxy_headers_on" in output) is warned
