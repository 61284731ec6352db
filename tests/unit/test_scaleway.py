"""Tests for fleet.scaleway against a loopback stub of the Instance API.

Scaleway has no emulator, so the stub replies to the calls the builder makes
with the documented JSON shapes of Instance v1 and Marketplace v2.
"""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from fleet import images, manifest, regions, scaleway
from fleet.errors import CloudError

REPO = Path(__file__).resolve().parents[2]
TOKEN = "00000000-1111-2222-3333-444444444444"
PROJECT = "55555555-6666-7777-8888-999999999999"


class StubState:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.servers: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}
        self.rules: dict[str, list[dict]] = {}
        self.polls_until_running = 2


def make_handler(state: StubState):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status: int, body: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def handle_any(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            state.requests.append((method, url.path, body or query))
            if self.headers.get("X-Auth-Token") != TOKEN:
                self.reply(401, {"message": "authentication is denied",
                                 "type": "denied_authentication"})
                return
            parts = url.path.strip("/").split("/")
            if parts[:3] == ["marketplace", "v2", "local-images"]:
                self.local_images(query)
            elif parts[:3] == ["instance", "v1", "zones"]:
                self.instance(method, parts[3], parts[4:], body, query)
            else:
                self.reply(404, {"message": "not found", "type": "not_found"})

        def local_images(self, query: dict) -> None:
            zone = query["zone"]
            found = [
                {"id": f"{zone}-{arch}-{query['image_label']}", "arch": arch,
                 "zone": zone, "label": query["image_label"], "type": "instance_sbs",
                 "compatible_commercial_types": types}
                for arch, types in (("x86_64", ["DEV1-S", "PRO2-XS"]),
                                    ("arm64", ["AMP2-C1"]))
            ]
            self.reply(200, {"local_images": found, "total_count": len(found)})

        def instance(self, method, zone, rest, body, query) -> None:
            if rest == ["servers"] and method == "GET":
                servers = [s for s in state.servers.values()
                           if s["zone"] == zone and query.get("name", "") in s["name"]]
                self.reply(200, {"servers": servers})
            elif rest == ["servers"] and method == "POST":
                server = {"id": str(uuid.uuid4()), "name": body["name"], "zone": zone,
                          "state": "stopped",
                          "commercial_type": body["commercial_type"],
                          "image": {"id": body["image"]}, "tags": body["tags"],
                          "public_ips": [], "public_ip": None}
                state.servers[server["id"]] = server
                self.reply(201, {"server": server})
            elif len(rest) == 2 and rest[0] == "servers" and method == "GET":
                server = state.servers.get(rest[1])
                if server is None:
                    self.reply(404, {"message": "server not found"})
                    return
                if server["state"] == "starting":
                    state.polls_until_running -= 1
                    if state.polls_until_running <= 0:
                        server["state"] = "running"
                        server["public_ips"] = [{"id": "ip1", "address": "192.0.2.10",
                                                 "family": "inet"}]
                self.reply(200, {"server": server})
            elif len(rest) == 3 and rest[2] == "action":
                server = state.servers[rest[1]]
                if body["action"] == "poweron":
                    server["state"] = "starting"
                elif body["action"] == "terminate":
                    del state.servers[rest[1]]
                self.reply(202, {"task": {"id": "t1", "description": body["action"],
                                          "status": "pending"}})
            elif rest == ["security_groups"] and method == "GET":
                groups = [g for g in state.groups.values()
                          if g["name"] == query["name"]]
                self.reply(200, {"security_groups": groups})
            elif rest == ["security_groups"] and method == "POST":
                group = {"id": str(uuid.uuid4()), **body}
                state.groups[group["id"]] = group
                self.reply(201, {"security_group": group})
            elif len(rest) == 3 and rest[2] == "rules":
                state.rules.setdefault(rest[1], []).append(body)
                self.reply(201, {"rule": {"id": str(uuid.uuid4()), **body}})
            elif len(rest) == 2 and rest[0] == "security_groups" and method == "DELETE":
                state.groups.pop(rest[1], None)
                self.reply(204)
            else:
                self.reply(404, {"message": "not found"})

        def do_GET(self):
            self.handle_any("GET")

        def do_POST(self):
            self.handle_any("POST")

        def do_DELETE(self):
            self.handle_any("DELETE")

    return Handler


@pytest.fixture
def stub():
    state = StubState()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(stub):
    client = scaleway.InstanceClient(TOKEN, PROJECT, stub.url, timeout=5)
    yield client
    client.close()


@pytest.fixture
def fleet(tmp_path):
    config = tmp_path / "regions.toml"
    config.write_text((REPO / "regions.toml").read_text())
    return regions.load(config)


def test_images_resolved_per_zone(client, fleet):
    par = images.scaleway_image(fleet.regions["fr-par-1"], client)
    ams = images.scaleway_image(fleet.regions["nl-ams-1"], client)
    assert par.id == "fr-par-1-x86_64-ubuntu_noble"
    assert ams.id == "nl-ams-1-x86_64-ubuntu_noble"
    assert par.id != ams.id


def test_ensure_server_creates_and_records(stub, client, fleet):
    region = fleet.regions["fr-par-1"]
    server = scaleway.ensure_server(client, fleet, region, "run42", poll_seconds=0.01,
                                    boot_timeout=5)
    assert server["state"] == "running"
    assert scaleway.public_address(server) == "192.0.2.10"

    created = next(body for method, path, body in stub.requests
                   if method == "POST" and path.endswith("/fr-par-1/servers"))
    assert created["commercial_type"] == "DEV1-S"
    assert created["image"] == "fr-par-1-x86_64-ubuntu_noble"
    assert created["project"] == PROJECT
    assert sorted(created["tags"]) == ["project=vatrates", "region=fr-par-1",
                                       "run=run42"]
    assert created["volumes"]["0"]["size"] == 20 * 10**9

    group_id = created["security_group"]
    ports = sorted(rule["dest_port_from"] for rule in stub.rules[group_id])
    assert ports == [22, 80, 443]
    assert stub.groups[group_id]["inbound_default_policy"] == "drop"

    recorded = manifest.Manifest.load(fleet, region)
    assert recorded.address == "192.0.2.10"
    kinds = sorted(entry["kind"] for entry in recorded.resources)
    assert kinds == ["security_group", "server"]
    entry = recorded.find("server")[0]
    assert entry["tags"] == {"project": "vatrates", "region": "fr-par-1",
                             "run": "run42"}
    assert entry["address"] == "192.0.2.10"


def test_ensure_server_reuses_existing(stub, client, fleet):
    region = fleet.regions["fr-par-1"]
    first = scaleway.ensure_server(client, fleet, region, "a", poll_seconds=0.01,
                                   boot_timeout=5)
    second = scaleway.ensure_server(client, fleet, region, "b", poll_seconds=0.01,
                                    boot_timeout=5)
    assert first["id"] == second["id"]
    assert len(stub.servers) == 1


def test_boot_timeout_is_bounded(stub, client, fleet):
    stub.polls_until_running = 10**6
    with pytest.raises(CloudError) as caught:
        scaleway.ensure_server(client, fleet, fleet.regions["nl-ams-1"], "r",
                               poll_seconds=0.05, boot_timeout=0.3)
    assert "'starting' after 0 s" in str(caught.value)


def test_terminate_removes_recorded(stub, client, fleet):
    region = fleet.regions["fr-par-1"]
    scaleway.ensure_server(client, fleet, region, "r", poll_seconds=0.01,
                           boot_timeout=5)
    note = scaleway.terminate(client, fleet, region)
    assert "terminated" in note
    assert stub.servers == {}
    recorded = manifest.Manifest.load(fleet, region)
    assert recorded.resources == []
    assert recorded.address == ""


def test_api_error_message(stub, fleet):
    bad = scaleway.InstanceClient("wrong", PROJECT, stub.url, timeout=5)
    with pytest.raises(CloudError) as caught:
        bad.list_servers("fr-par-1", "x", [])
    bad.close()
    assert "401" in str(caught.value)
    assert "authentication is denied" in str(caught.value)
    assert "wrong" not in str(caught.value)


def test_from_env_names_missing(monkeypatch):
    monkeypatch.delenv("SCW_SECRET_KEY", raising=False)
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT)
    with pytest.raises(CloudError) as caught:
        scaleway.InstanceClient.from_env()
    assert "SCW_SECRET_KEY not set" in str(caught.value)


def test_from_env_base_url(monkeypatch, stub):
    monkeypatch.setenv("SCW_SECRET_KEY", TOKEN)
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT)
    monkeypatch.setenv("SCW_API_URL", stub.url)
    client = scaleway.InstanceClient.from_env()
    assert client.list_servers("fr-par-1", "none", []) == []
    client.close()
