"""Record every cloud resource the builder creates in boxes/<region>/manifest.json.

Each resource carries the tags project, region and run (the same ones set
on the cloud side), so a later cleanup can match what the cloud lists with
what this checkout created. The file is rewritten atomically on every change.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError
from fleet.regions import Fleet, Region

MANIFEST_NAME = "manifest.json"
KINDS = ("instance", "server", "key_pair", "security_group", "ip", "volume")


def resource_tags(fleet: Fleet, region: Region, run_id: str) -> dict[str, str]:
    """Return the tags every cloud resource of this region and run carries."""
    return {"project": fleet.project.name, "region": region.name, "run": run_id}


@dataclass
class Manifest:
    """The resources created for one region."""

    path: Path
    project: str
    region: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    # Public IPv4 address of the region's box, once known; DNS and monitoring
    # read it from the top level of the file.
    address: str = ""

    @classmethod
    def load(cls, fleet: Fleet, region: Region) -> Manifest:
        path = region.box_dir / MANIFEST_NAME
        if not path.exists():
            return cls(path, fleet.project.name, region.name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{path}: not valid JSON ({error.msg}); fix it by hand, because it "
                f"lists cloud resources that may still exist"
            ) from None
        return cls(path, data.get("project", fleet.project.name),
                   data.get("region", region.name), list(data.get("resources", [])),
                   data.get("address", ""))

    def record(self, kind: str, resource_id: str, provider: str,
               tags: dict[str, str], **details: Any) -> dict[str, Any]:
        """Add or update one resource and save the file."""
        if kind not in KINDS:
            raise ValueError(f"unknown resource kind {kind!r}; use one of {KINDS}")
        entry = {
            "kind": kind,
            "id": resource_id,
            "provider": provider,
            "tags": dict(sorted(tags.items())),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **details,
        }
        existing = self.get(kind, resource_id)
        if existing is not None:
            entry["created"] = existing.get("created", entry["created"])
            self.resources.remove(existing)
        self.resources.append(entry)
        self.save()
        return entry

    def get(self, kind: str, resource_id: str) -> dict[str, Any] | None:
        for entry in self.resources:
            if entry["kind"] == kind and entry["id"] == resource_id:
                return entry
        return None

    def find(self, kind: str) -> list[dict[str, Any]]:
        return [entry for entry in self.resources if entry["kind"] == kind]

    def forget(self, kind: str, resource_id: str) -> None:
        """Remove one resource (after it was deleted in the cloud) and save."""
        entry = self.get(kind, resource_id)
        if entry is not None:
            self.resources.remove(entry)
            self.save()

    def set_address(self, address: str) -> None:
        """Record the box's public address and save."""
        self.address = address
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"project": self.project, "region": self.region,
                "address": self.address, "resources": self.resources}
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n",
                             encoding="utf-8")
        temporary.replace(self.path)
