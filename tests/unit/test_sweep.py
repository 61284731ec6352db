"""Leftover cloud resources: tagged by the builder, owned by no manifest."""

from __future__ import annotations

import functools
import textwrap

import boto3
import pytest
from moto import mock_aws

from fleet import sweep
from fleet.errors import ConfigError
from fleet.manifest import Manifest, resource_tags
from fleet.regions import load

FLEET = """
[project]
name = "vatrates"
domain = "api.vatrates.example"
primary = "eu-west-1"

[regions.eu-west-1]
provider = "aws"
size = "t3.small"
hostname = "eu-west-1.api.vatrates.example"
key_pair = "vatrates"
private_key = "~/.ssh/vatrates.pem"
"""


@pytest.fixture
def fleet(tmp_path):
    path = tmp_path / "regions.toml"
    path.write_text(textwrap.dedent(FLEET))
    return load(path)


@pytest.fixture
def aws(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield


def ec2(region: str):
    return boto3.client("ec2", region_name=region)


def route53():
    return boto3.client("route53", region_name="us-east-1")


def tag_spec(kind: str, tags: dict[str, str]) -> list[dict]:
    return [{"ResourceType": kind,
             "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


@functools.cache
def ami(region: str) -> str:
    # moto's bundled AMI ids are the same in every mock, so one lookup is enough.
    images = ec2(region).describe_images(
        Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}])
    return images["Images"][0]["ImageId"]


def make_set(region: str, tags: dict[str, str] | None, label: str) -> dict[str, str]:
    """Create one instance, key pair, security group and volume; return ids."""
    client = ec2(region)
    specs = (lambda kind: tag_spec(kind, tags)) if tags else (lambda kind: [])
    instance = client.run_instances(
        ImageId=ami(region), MinCount=1, MaxCount=1, InstanceType="t3.small",
        TagSpecifications=specs("instance"))["Instances"][0]["InstanceId"]
    pair = client.create_key_pair(KeyName=f"key-{label}",
                                  TagSpecifications=specs("key-pair"))
    group = client.create_security_group(
        GroupName=f"sg-{label}", Description="test",
        TagSpecifications=specs("security-group"))["GroupId"]
    volume = client.create_volume(
        AvailabilityZone=f"{region}a", Size=8,
        TagSpecifications=specs("volume"))["VolumeId"]
    return {"instance": instance, "key_pair": pair["KeyPairId"],
            "key_name": pair["KeyName"], "security_group": group, "volume": volume}


def make_health_check(tags: dict[str, str]) -> str:
    client = route53()
    check = client.create_health_check(CallerReference=str(tags), HealthCheckConfig={
        "IPAddress": "198.51.100.1", "Port": 443, "Type": "HTTPS",
        "ResourcePath": "/readyz"})["HealthCheck"]["Id"]
    client.change_tags_for_resource(
        ResourceType="healthcheck", ResourceId=check,
        AddTags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return check


def own(fleet, region_name: str, ids: dict[str, str]) -> None:
    region = fleet.regions[region_name]
    manifest = Manifest.load(fleet, region)
    tags = resource_tags(fleet, region, "run-1")
    manifest.record("instance", ids["instance"], "aws", tags)
    manifest.record("key_pair", ids["key_name"], "aws", tags)
    manifest.record("security_group", ids["security_group"], "aws", tags)
    manifest.record("volume", ids["volume"], "aws", tags)


@pytest.fixture
def world(fleet, aws):
    mine = {"project": "vatrates", "region": "eu-west-1", "run": "run-1"}
    owned = make_set("eu-west-1", mine, "owned")
    own(fleet, "eu-west-1", owned)
    leftover = make_set("eu-west-1", {**mine, "run": "run-0"}, "leftover")
    foreign = make_set("eu-west-1", {"project": "other", "region": "eu-west-1"},
                       "foreign")
    untagged = make_set("eu-west-1", None, "untagged")
    checks = {
        "owned": make_health_check({"project": "vatrates", "region": "eu-west-1"}),
        "leftover": make_health_check({"project": "vatrates", "region": "gone-1"}),
        "foreign": make_health_check({"project": "other", "region": "gone-1"}),
    }
    return {"owned": owned, "leftover": leftover, "foreign": foreign,
            "untagged": untagged, "checks": checks}


def found(fleet, extra=None):
    return sweep.find_leftovers(fleet, ec2, route53(), extra)


def test_lists_only_unowned_tagged(fleet, world):
    leftovers = found(fleet)

    listed = {(item.kind, item.id) for item in leftovers}
    expected = {(kind, world["leftover"][kind]) for kind in
                ("instance", "key_pair", "security_group", "volume")}
    expected.add(("health_check", world["checks"]["leftover"]))
    assert listed == expected
    assert [item.kind for item in leftovers] == list(sweep.DELETE_ORDER)


def test_listing_deletes_nothing(fleet, world):
    found(fleet)
    client = ec2("eu-west-1")
    states = {i["InstanceId"]: i["State"]["Name"]
              for r in client.describe_instances()["Reservations"]
              for i in r["Instances"]}
    assert states[world["leftover"]["instance"]] == "running"
    volumes = {v["VolumeId"] for v in client.describe_volumes()["Volumes"]}
    assert world["leftover"]["volume"] in volumes
    checks = {c["Id"] for c in route53().list_health_checks()["HealthChecks"]}
    assert world["checks"]["leftover"] in checks


def test_delete_removes_only_leftovers(fleet, world):
    results = sweep.delete_leftovers(found(fleet), ec2, route53(), wait=30)

    assert all(result.ok for result in results), [r.message for r in results]
    assert len(results) == 5
    client = ec2("eu-west-1")
    states = {i["InstanceId"]: i["State"]["Name"]
              for r in client.describe_instances()["Reservations"]
              for i in r["Instances"]}
    assert states[world["leftover"]["instance"]] == "terminated"
    for name in ("owned", "foreign", "untagged"):
        assert states[world[name]["instance"]] == "running"
    pairs = {p["KeyPairId"] for p in client.describe_key_pairs()["KeyPairs"]}
    assert world["leftover"]["key_pair"] not in pairs
    assert world["owned"]["key_pair"] in pairs
    groups = {g["GroupId"] for g in client.describe_security_groups()["SecurityGroups"]}
    assert world["leftover"]["security_group"] not in groups
    assert world["owned"]["security_group"] in groups
    volumes = {v["VolumeId"] for v in client.describe_volumes()["Volumes"]}
    assert world["leftover"]["volume"] not in volumes
    assert world["foreign"]["volume"] in volumes
    checks = {c["Id"] for c in route53().list_health_checks()["HealthChecks"]}
    assert checks == {world["checks"]["owned"], world["checks"]["foreign"]}
    assert found(fleet) == []


def test_extra_region_is_scanned(fleet, aws):
    stray = make_set("ap-southeast-2", {"project": "vatrates", "region": "x"}, "stray")
    assert all(item.aws_region == "eu-west-1" for item in found(fleet))
    ids = {item.id for item in found(fleet, ["ap-southeast-2"])}
    assert stray["instance"] in ids
    assert stray["volume"] in ids


def test_removed_region_manifest_still_owns(fleet, aws):
    tags = {"project": "vatrates", "region": "us-east-1", "run": "run-1"}
    ids = make_set("us-east-1", tags, "old")
    box_dir = fleet.path.parent / "boxes" / "us-east-1"
    manifest = Manifest(box_dir / "manifest.json", "vatrates", "us-east-1")
    for kind in ("instance", "security_group", "volume"):
        manifest.record(kind, ids[kind], "aws", tags)
    manifest.record("key_pair", ids["key_name"], "aws", tags)

    assert found(fleet, ["us-east-1"]) == []
    assert "us-east-1" in sweep.aws_regions_to_scan(fleet, sweep.read_ownership(fleet))


def test_unreadable_manifest_stops_sweep(fleet, aws):
    box_dir = fleet.path.parent / "boxes" / "eu-west-1"
    box_dir.mkdir(parents=True)
    (box_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="manifest.json"):
        found(fleet)


def test_health_check_in_use_kept(fleet, world):
    client = route53()
    zone = client.create_hosted_zone(Name="vatrates.example", CallerReference="z")
    client.change_resource_record_sets(
        HostedZoneId=zone["HostedZone"]["Id"], ChangeBatch={"Changes": [{
            "Action": "CREATE", "ResourceRecordSet": {
                "Name": "api.vatrates.example", "Type": "A", "SetIdentifier": "gone-1",
                "Region": "eu-west-2", "TTL": 60,
                "ResourceRecords": [{"Value": "198.51.100.1"}],
                "HealthCheckId": world["checks"]["leftover"]}}]})

    ids = {item.id for item in found(fleet)}
    assert world["checks"]["leftover"] not in ids
    assert world["leftover"]["instance"] in ids


def test_task_lists_then_deletes(fleet, world, capsys):
    from invoke import Context

    from fleet.cli.dns import sweep as sweep_task

    sweep_task(Context(), config=str(fleet.path))
    listing = capsys.readouterr().out
    assert world["leftover"]["volume"] in listing
    assert "--apply" in listing
    assert len(found(fleet)) == 5

    sweep_task(Context(), config=str(fleet.path), apply=True)
    assert "Deleted 5 of 5" in capsys.readouterr().out
    assert found(fleet) == []
