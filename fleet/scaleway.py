"""Create and remove Scaleway servers through the Instance API (v1).

Why not Vagrant's own plugin: vagrant-scaleway speaks Scaleway's retired
compute API, so it can no longer create servers. This module creates the
server, its security group and public IP with today's API, records them in
the region's manifest, and Vagrant then manages the running server as an
existing host (the `managed` provider in the rendered Vagrantfile).

Requests follow the documented shapes of https://www.scaleway.com/en/developers/api/
(Instance v1 and Marketplace v2). The base URL comes from SCW_API_URL when
set, which is how the tests point this client at a local stub.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import httpx

from fleet.errors import CloudError
from fleet.manifest import Manifest, resource_tags
from fleet.regions import Fleet, Region

log = logging.getLogger(__name__)

API_URL = "https://api.scaleway.com"
REQUEST_TIMEOUT = 30.0
BOOT_TIMEOUT = 600.0
POLL_SECONDS = 5.0
MAX_PAGES = 10
OPEN_PORTS = (22, 80, 443)


class InstanceClient:
    """A small client for the Instance and Marketplace calls the builder makes."""

    def __init__(self, secret_key: str, project_id: str, base_url: str = API_URL,
                 timeout: float = REQUEST_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.project_id = project_id
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"X-Auth-Token": secret_key, "User-Agent": "vatfleet"},
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_env(cls) -> InstanceClient:
        """Build a client from SCW_SECRET_KEY, SCW_DEFAULT_PROJECT_ID, SCW_API_URL."""
        secret = os.environ.get("SCW_SECRET_KEY", "")
        project = os.environ.get("SCW_DEFAULT_PROJECT_ID", "")
        missing = [name for name, value in
                   (("SCW_SECRET_KEY", secret), ("SCW_DEFAULT_PROJECT_ID", project))
                   if not value]
        if missing:
            raise CloudError(
                f"{' and '.join(missing)} not set; export the Scaleway API secret "
                f"key and project id (Scaleway console, IAM > API keys)"
            )
        return cls(secret, project, os.environ.get("SCW_API_URL", API_URL))

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request; return the JSON body or raise CloudError."""
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.HTTPError as error:
            raise CloudError(f"Scaleway {method} {path} failed: {error}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = body.get("message") or body.get("type") or response.text
            except ValueError:
                detail = response.text[:200]
            raise CloudError(
                f"Scaleway {method} {path} returned {response.status_code}: {detail}"
            )
        if response.status_code == 204 or not response.content:
            return {}
        return response.json()

    def _zone_path(self, zone: str, rest: str) -> str:
        return f"/instance/v1/zones/{zone}/{rest}"

    # ----- Marketplace ------------------------------------------------------

    def list_local_images(self, zone: str, label: str) -> list[dict[str, Any]]:
        """Return the local images of a Marketplace label in one zone."""
        images: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            body = self.request("GET", "/marketplace/v2/local-images", params={
                "zone": zone, "image_label": label, "page": page, "page_size": 100,
            })
            batch = body.get("local_images", [])
            images.extend(batch)
            if len(images) >= body.get("total_count", 0) or not batch:
                break
        return images

    # ----- servers ----------------------------------------------------------

    def list_servers(self, zone: str, name: str, tags: list[str]) -> list[dict]:
        body = self.request("GET", self._zone_path(zone, "servers"), params={
            "name": name, "tags": ",".join(tags), "project": self.project_id,
        })
        # The name filter matches substrings, so compare exactly here.
        return [s for s in body.get("servers", []) if s.get("name") == name]

    def create_server(self, zone: str, *, name: str, commercial_type: str,
                      image: str, tags: list[str], security_group: str,
                      root_gb: int) -> dict[str, Any]:
        body = self.request("POST", self._zone_path(zone, "servers"), json={
            "name": name,
            "commercial_type": commercial_type,
            "image": image,
            "project": self.project_id,
            "tags": tags,
            "dynamic_ip_required": True,
            "security_group": security_group,
            "volumes": {"0": {"size": root_gb * 10**9, "volume_type": "sbs_volume"}},
        })
        return body["server"]

    def get_server(self, zone: str, server_id: str) -> dict[str, Any]:
        return self.request("GET", self._zone_path(zone, f"servers/{server_id}"))[
            "server"]

    def server_action(self, zone: str, server_id: str, action: str) -> dict:
        """Run poweron, poweroff, reboot or terminate; return the task."""
        path = self._zone_path(zone, f"servers/{server_id}/action")
        body = self.request("POST", path, json={"action": action})
        return body.get("task", {})

    # ----- security groups --------------------------------------------------

    def find_security_group(self, zone: str, name: str) -> dict[str, Any] | None:
        body = self.request("GET", self._zone_path(zone, "security_groups"),
                            params={"name": name, "project": self.project_id})
        for group in body.get("security_groups", []):
            if group.get("name") == name:
                return group
        return None

    def create_security_group(self, zone: str, name: str, tags: list[str]) -> dict:
        body = self.request("POST", self._zone_path(zone, "security_groups"), json={
            "name": name,
            "project": self.project_id,
            "tags": tags,
            "stateful": True,
            "inbound_default_policy": "drop",
            "outbound_default_policy": "accept",
        })
        return body["security_group"]

    def add_inbound_rule(self, zone: str, group_id: str, port: int) -> dict:
        path = self._zone_path(zone, f"security_groups/{group_id}/rules")
        body = self.request("POST", path, json={
            "action": "accept",
            "direction": "inbound",
            "protocol": "TCP",
            "ip_range": "0.0.0.0/0",
            "dest_port_from": port,
        })
        return body["rule"]

    def delete_security_group(self, zone: str, group_id: str) -> None:
        self.request("DELETE", self._zone_path(zone, f"security_groups/{group_id}"))


def scaleway_tags(tags: dict[str, str]) -> list[str]:
    """Scaleway tags are plain strings, so key=value pairs are joined."""
    return [f"{key}={value}" for key, value in sorted(tags.items())]


def public_address(server: dict[str, Any]) -> str:
    """Return the server's public IPv4 address, or "" if it has none yet."""
    for ip in server.get("public_ips") or []:
        if ip.get("family", "inet") == "inet" and ip.get("address"):
            return ip["address"]
    legacy = server.get("public_ip") or {}
    return legacy.get("address", "") if isinstance(legacy, dict) else ""


def ensure_server(client: InstanceClient, fleet: Fleet, region: Region,
                  run_id: str, *, boot_timeout: float = BOOT_TIMEOUT,
                  poll_seconds: float = POLL_SECONDS) -> dict[str, Any]:
    """Create (or find) the region's server, start it, record it; return it."""
    from fleet.images import scaleway_image

    zone = region.zone
    name = f"{fleet.project.name}-{region.name}"
    tags = resource_tags(fleet, region, run_id)
    manifest = Manifest.load(fleet, region)

    project_tag = [f"project={fleet.project.name}"]
    existing = client.list_servers(zone, name, project_tag)
    if existing:
        server = existing[0]
        log.info("event=server_found region=%s server=%s", region.name, server["id"])
    else:
        group = ensure_security_group(client, fleet, region, run_id, manifest)
        image = scaleway_image(region, client)
        server = client.create_server(
            zone, name=name, commercial_type=region.size, image=image.id,
            tags=scaleway_tags(tags), security_group=group["id"],
            root_gb=region.disk_gb,
        )
        manifest.record("server", server["id"], "scaleway", tags, zone=zone,
                        name=name, image=image.id)
        log.info("event=server_created region=%s server=%s", region.name, server["id"])

    server = wait_running(client, zone, server, boot_timeout, poll_seconds)
    address = public_address(server)
    entry = manifest.get("server", server["id"])
    recorded_tags = entry["tags"] if entry else tags
    manifest.record("server", server["id"], "scaleway", recorded_tags, zone=zone,
                    name=name, address=address)
    manifest.set_address(address)
    return server


def ensure_security_group(client: InstanceClient, fleet: Fleet, region: Region,
                          run_id: str, manifest: Manifest) -> dict[str, Any]:
    """Find or create the group allowing inbound TCP 22, 80 and 443."""
    name = f"{fleet.project.name}-{region.name}"
    group = client.find_security_group(region.zone, name)
    if group is not None:
        return group

    tags = resource_tags(fleet, region, run_id)
    group = client.create_security_group(region.zone, name, scaleway_tags(tags))
    manifest.record("security_group", group["id"], "scaleway", tags,
                    zone=region.zone, name=name)
    for port in OPEN_PORTS:
        client.add_inbound_rule(region.zone, group["id"], port)
    return group


def wait_running(client: InstanceClient, zone: str, server: dict[str, Any],
                 timeout: float, poll_seconds: float) -> dict[str, Any]:
    """Power the server on if needed and poll until it runs with a public IP."""
    if server.get("state") in ("stopped", "stopped in place"):
        client.server_action(zone, server["id"], "poweron")

    deadline = time.monotonic() + timeout
    attempts = max(1, int(timeout / max(poll_seconds, 0.01)) + 1)
    for _ in range(attempts):
        server = client.get_server(zone, server["id"])
        if server.get("state") == "running" and public_address(server):
            return server
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_seconds)
    raise CloudError(
        f"Scaleway server {server['id']} in {zone} is {server.get('state')!r} "
        f"after {timeout:.0f} s; check it in the console, then run up again"
    )


def terminate(client: InstanceClient, fleet: Fleet, region: Region) -> str:
    """Terminate the recorded server (with its volumes) and security group."""
    manifest = Manifest.load(fleet, region)
    notes = []
    for entry in manifest.find("server"):
        try:
            client.server_action(entry["zone"], entry["id"], "terminate")
        except CloudError as error:
            if "404" not in str(error):
                raise
        manifest.forget("server", entry["id"])
        manifest.set_address("")
        notes.append(f"terminated {entry['id']}")
    for entry in manifest.find("security_group"):
        # NOTE: a group can be deleted only after its server is gone. Terminate
        # runs asynchronously, so a group still attached stays for the next
        # destroy instead of being waited for here.
        try:
            client.delete_security_group(entry["zone"], entry["id"])
            manifest.forget("security_group", entry["id"])
        except CloudError as error:
            notes.append(f"security group {entry['id']} kept: {error}")
    return "; ".join(notes) or "nothing recorded"
