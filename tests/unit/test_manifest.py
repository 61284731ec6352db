"""Tests for fleet.manifest: recording, updating and reading resources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet import manifest, regions
from fleet.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet(tmp_path):
    config = tmp_path / "regions.toml"
    config.write_text((REPO / "regions.toml").read_text())
    return regions.load(config)


def test_manifest_file_format(fleet):
    region = fleet.regions["fr-par-1"]
    recorded = manifest.Manifest.load(fleet, region)
    tags = manifest.resource_tags(fleet, region, "run1")
    recorded.record("server", "s1", "scaleway", tags, zone="fr-par-1",
                    address="192.0.2.7")
    recorded.set_address("192.0.2.7")
    data = json.loads((region.box_dir / "manifest.json").read_text())
    assert data["project"] == "vatrates"
    assert data["region"] == "fr-par-1"
    assert data["address"] == "192.0.2.7"
    entry = data["resources"][0]
    assert entry["kind"] == "server"
    assert entry["id"] == "s1"
    assert entry["tags"] == {"project": "vatrates", "region": "fr-par-1",
                             "run": "run1"}


def test_manifest_forget(fleet):
    region = fleet.regions["local"]
    recorded = manifest.Manifest.load(fleet, region)
    recorded.record("server", "s1", "scaleway", {})
    recorded.forget("server", "s1")
    assert manifest.Manifest.load(fleet, region).resources == []


def test_manifest_rejects_unknown_kind(fleet):
    recorded = manifest.Manifest.load(fleet, fleet.regions["local"])
    with pytest.raises(ValueError):
        recorded.record("bucket", "b1", "aws", {})


def test_manifest_keeps_created_on_update(fleet):
    region = fleet.regions["local"]
    recorded = manifest.Manifest.load(fleet, region)
    first = recorded.record("server", "s1", "scaleway", {"run": "a"})
    second = recorded.record("server", "s1", "scaleway", {"run": "a"}, address="x")
    assert second["created"] == first["created"]
    assert len(manifest.Manifest.load(fleet, region).resources) == 1


def test_manifest_corrupt_names_file(fleet):
    region = fleet.regions["local"]
    region.box_dir.mkdir(parents=True)
    (region.box_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError) as caught:
        manifest.Manifest.load(fleet, region)
    assert "manifest.json" in str(caught.value)
