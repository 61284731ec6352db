"""Tests for fleet.ec2 through moto: tags, ports and the manifest entries."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from fleet import ec2, manifest, regions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def session(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.session.Session()


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "vatrates.pem"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, timeout=30)
    monkeypatch.setenv("HOME", str(home))
    config = tmp_path / "regions.toml"
    config.write_text((REPO / "regions.toml").read_text())
    return regions.load(config)


def tags_of(items) -> dict:
    return {tag["Key"]: tag["Value"] for tag in items}


def test_security_group_ports_and_tags(session, fleet):
    region = fleet.regions["eu-west-1"]
    group_id = ec2.ensure_security_group(session, fleet, region, "run7")
    client = session.client("ec2", region_name="eu-west-1")
    group = client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    assert group["GroupName"] == "vatrates-eu-west-1"
    ports = sorted(p["FromPort"] for p in group["IpPermissions"])
    assert ports == [22, 80, 443]
    assert tags_of(group["Tags"]) == {"project": "vatrates", "region": "eu-west-1",
                                      "run": "run7"}
    entry = manifest.Manifest.load(fleet, region).find("security_group")[0]
    assert entry["id"] == group_id
    assert entry["tags"]["run"] == "run7"


def test_security_group_idempotent(session, fleet):
    region = fleet.regions["eu-west-1"]
    first = ec2.ensure_security_group(session, fleet, region, "a")
    second = ec2.ensure_security_group(session, fleet, region, "b")
    assert first == second
    assert len(manifest.Manifest.load(fleet, region).find("security_group")) == 1


def test_key_pair_imported_with_tags(session, fleet):
    region = fleet.regions["us-east-1"]
    ec2.ensure_key_pair(session, fleet, region, "run8")
    client = session.client("ec2", region_name="us-east-1")
    pair = client.describe_key_pairs(KeyNames=["vatrates"])["KeyPairs"][0]
    assert tags_of(pair.get("Tags", [])) == {"project": "vatrates",
                                             "region": "us-east-1", "run": "run8"}
    recorded = manifest.Manifest.load(fleet, region).find("key_pair")
    assert recorded[0]["name"] == "vatrates"


def test_instance_recorded_with_address(session, fleet):
    region = fleet.regions["eu-west-1"]
    client = session.client("ec2", region_name="eu-west-1")
    image = client.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]
    instance = client.run_instances(ImageId=image, MinCount=1, MaxCount=1)[
        "Instances"][0]["InstanceId"]
    id_file = region.box_dir / ".vagrant" / "machines" / "eu-west-1" / "aws" / "id"
    id_file.parent.mkdir(parents=True)
    id_file.write_text(instance)

    assert ec2.record_instance(session, fleet, region, "run9") == instance
    data = json.loads((region.box_dir / "manifest.json").read_text())
    entry = next(r for r in data["resources"] if r["kind"] == "instance")
    assert entry["id"] == instance
    assert entry["tags"] == {"project": "vatrates", "region": "eu-west-1",
                             "run": "run9"}
    assert data["address"] == entry["address"]


def test_delete_recorded(session, fleet):
    region = fleet.regions["eu-west-1"]
    group_id = ec2.ensure_security_group(session, fleet, region, "r")
    ec2.ensure_key_pair(session, fleet, region, "r")
    notes = ec2.delete_recorded(session, fleet, region)
    assert f"deleted {group_id}" in notes
    assert manifest.Manifest.load(fleet, region).resources == []
    client = session.client("ec2", region_name="eu-west-1")
    assert client.describe_key_pairs()["KeyPairs"] == []
