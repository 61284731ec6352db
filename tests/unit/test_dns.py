"""Latency records and health checks for the shared name, against moto."""

from __future__ import annotations

import textwrap
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from fleet import dns
from fleet.errors import ConfigError
from fleet.regions import load

DOMAIN = "api.vatrates.example"

AWS_REGION = """
[regions.{name}]
provider = "aws"
size = "t3.small"
hostname = "{name}.api.vatrates.example"
key_pair = "vatrates"
private_key = "~/.ssh/vatrates.pem"
"""

SCALEWAY_REGION = """
[regions.{name}]
provider = "scaleway"
size = "DEV1-S"
hostname = "{name}.api.vatrates.example"
private_key = "~/.ssh/vatrates.pem"
latency_region = "{latency}"
"""


def write_fleet(tmp_path: Path, scaleway: dict[str, str] | None = None,
                aws: tuple[str, ...] = ("eu-west-1", "us-east-1")) -> Path:
    text = textwrap.dedent(f"""
        [project]
        name = "vatrates"
        domain = "{DOMAIN}"
        primary = "{aws[0]}"
        """)
    for name in aws:
        text += AWS_REGION.format(name=name)
    for name, latency in (scaleway if scaleway is not None
                          else {"fr-par-1": "eu-west-3"}).items():
        text += SCALEWAY_REGION.format(name=name, latency=latency)
    path = tmp_path / "regions.toml"
    path.write_text(text)
    return path


ADDRESSES = {
    "eu-west-1": ["198.51.100.1"],
    "us-east-1": ["198.51.100.2"],
    "fr-par-1": ["198.51.100.3"],
}


@pytest.fixture
def aws(monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        client = boto3.client("route53", region_name="us-east-1")
        zone = client.create_hosted_zone(
            Name="vatrates.example", CallerReference="test-zone")
        yield client, zone["HostedZone"]["Id"].split("/")[-1]


def records(client, zone_id):
    return dns.read_records(client, zone_id, DOMAIN)


def sync(client, config: Path, addresses=ADDRESSES, apply=True):
    planned, _ = dns.prepare(client, load(config), addresses)
    if apply:
        dns.apply(client, planned)
    return planned


def test_plan_lists_one_record_per_box(tmp_path, aws):
    client, zone_id = aws
    planned = sync(client, write_fleet(tmp_path), apply=False)

    created = {c.record["SetIdentifier"]: c.record for c in planned.changes}
    assert [c.action for c in planned.changes] == ["CREATE"] * 3
    assert created["eu-west-1"]["Region"] == "eu-west-1"
    assert created["fr-par-1"]["Region"] == "eu-west-3"
    assert created["fr-par-1"]["ResourceRecords"] == [{"Value": "198.51.100.3"}]
    assert sorted(planned.new_checks) == ["eu-west-1", "fr-par-1", "us-east-1"]
    assert records(client, zone_id) == []
    assert client.list_health_checks()["HealthChecks"] == []


def test_apply_creates_records_and_checks(tmp_path, aws):
    client, zone_id = aws
    sync(client, write_fleet(tmp_path))

    held = {r["SetIdentifier"]: r for r in records(client, zone_id)}
    assert sorted(held) == ["eu-west-1", "fr-par-1", "us-east-1"]
    assert held["us-east-1"]["Type"] == "A"
    assert held["us-east-1"]["Region"] == "us-east-1"
    assert held["us-east-1"]["TTL"] == dns.RECORD_TTL

    checks = client.list_health_checks()["HealthChecks"]
    assert len(checks) == 3
    by_id = {c["Id"]: c for c in checks}
    for region, record in held.items():
        config = by_id[record["HealthCheckId"]]["HealthCheckConfig"]
        assert config["IPAddress"] == ADDRESSES[region][0]
        assert config["Type"] == "HTTPS"
        assert config["ResourcePath"] == "/readyz"
        assert config["FullyQualifiedDomainName"] == DOMAIN
        assert config["EnableSNI"] is True
        tags = client.list_tags_for_resource(
            ResourceType="healthcheck", ResourceId=record["HealthCheckId"])
        tag_map = {t["Key"]: t["Value"] for t in tags["ResourceTagSet"]["Tags"]}
        assert tag_map["project"] == "vatrates"
        assert tag_map["region"] == region


def test_second_apply_changes_nothing(tmp_path, aws):
    client, zone_id = aws
    config = write_fleet(tmp_path)
    sync(client, config)
    before = records(client, zone_id)
    checks_before = client.list_health_checks()["HealthChecks"]

    again = sync(client, config)

    assert again.is_empty
    assert again.changes == []
    assert len(again.unchanged) == 3
    assert records(client, zone_id) == before
    assert client.list_health_checks()["HealthChecks"] == checks_before


def test_rename_deletes_full_old_record(tmp_path, aws):
    client, zone_id = aws
    sync(client, write_fleet(tmp_path))
    old = next(r for r in records(client, zone_id)
               if r["SetIdentifier"] == "fr-par-1")

    sent = []
    client.meta.events.register(
        "provide-client-params.route53.ChangeResourceRecordSets",
        lambda params, **_: sent.append(params),
    )
    renamed = write_fleet(tmp_path, scaleway={"fr-par-2": "eu-west-3"})
    addresses = {**ADDRESSES, "fr-par-2": ADDRESSES["fr-par-1"]}
    del addresses["fr-par-1"]
    planned = sync(client, renamed, addresses)

    assert len(sent) == 1
    changes = sent[0]["ChangeBatch"]["Changes"]
    assert [c["Action"] for c in changes] == ["CREATE", "DELETE"]
    assert changes[1]["ResourceRecordSet"] == old
    assert changes[0]["ResourceRecordSet"]["SetIdentifier"] == "fr-par-2"
    assert changes[0]["ResourceRecordSet"]["Region"] == "eu-west-3"
    held = sorted(r["SetIdentifier"] for r in records(client, zone_id))
    assert held == ["eu-west-1", "fr-par-2", "us-east-1"]
    assert planned.stale_checks == [old["HealthCheckId"]]
    remaining = {c["Id"] for c in client.list_health_checks()["HealthChecks"]}
    assert old["HealthCheckId"] not in remaining
    assert len(remaining) == 3


def test_changed_address_replaces_record(tmp_path, aws):
    client, zone_id = aws
    config = write_fleet(tmp_path)
    sync(client, config)
    old = next(r for r in records(client, zone_id)
               if r["SetIdentifier"] == "us-east-1")

    moved = {**ADDRESSES, "us-east-1": ["198.51.100.20"]}
    planned = sync(client, config, moved)

    actions = [(c.action, c.record["SetIdentifier"]) for c in planned.changes]
    assert actions == [("DELETE", "us-east-1"), ("CREATE", "us-east-1")]
    assert planned.changes[0].record == old
    new = next(r for r in records(client, zone_id)
               if r["SetIdentifier"] == "us-east-1")
    assert new["ResourceRecords"] == [{"Value": "198.51.100.20"}]
    assert new["HealthCheckId"] != old["HealthCheckId"]
    check = client.get_health_check(HealthCheckId=new["HealthCheckId"])
    assert check["HealthCheck"]["HealthCheckConfig"]["IPAddress"] == "198.51.100.20"
    assert sync(client, config, moved).is_empty


def test_collision_rejected_before_any_call(tmp_path, aws):
    client, _ = aws
    calls = []
    client.meta.events.register("before-call.route53", lambda **kw: calls.append(kw))
    config = write_fleet(tmp_path, scaleway={"fr-par-1": "eu-west-1"})

    with pytest.raises(ConfigError) as raised:
        dns.prepare(client, load(config), ADDRESSES)

    assert "'eu-west-1'" in str(raised.value)
    assert "fr-par-1" in str(raised.value)
    assert calls == []


def test_event_hook_sees_calls(tmp_path, aws):
    # Guards the collision test: the same hook does record normal calls.
    client, _ = aws
    calls = []
    client.meta.events.register("before-call.route53", lambda **kw: calls.append(kw))
    sync(client, write_fleet(tmp_path), apply=False)
    assert calls


def test_ipv6_box_gets_aaaa_record(tmp_path, aws):
    client, zone_id = aws
    addresses = {**ADDRESSES, "eu-west-1": ["198.51.100.1", "2001:db8::1"]}
    sync(client, write_fleet(tmp_path), addresses)

    held = [(r["Type"], r["SetIdentifier"]) for r in records(client, zone_id)]
    assert ("AAAA", "eu-west-1") in held
    assert ("A", "eu-west-1") in held
    aaaa = next(r for r in records(client, zone_id) if r["Type"] == "AAAA")
    a = next(r for r in records(client, zone_id)
             if r["Type"] == "A" and r["SetIdentifier"] == "eu-west-1")
    assert aaaa["ResourceRecords"] == [{"Value": "2001:db8::1"}]
    assert aaaa["HealthCheckId"] == a["HealthCheckId"]
    assert len(client.list_health_checks()["HealthChecks"]) == 3


def test_box_without_address_is_kept(tmp_path, aws):
    client, zone_id = aws
    config = write_fleet(tmp_path)
    sync(client, config)

    partial = {k: v for k, v in ADDRESSES.items() if k != "fr-par-1"}
    planned = sync(client, config, partial)

    assert planned.changes == []
    assert any("fr-par-1" in reason for reason in planned.skipped)
    assert len(records(client, zone_id)) == 3


def test_simple_record_replaced(tmp_path, aws):
    client, zone_id = aws
    client.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={
        "Changes": [{"Action": "CREATE", "ResourceRecordSet": {
            "Name": DOMAIN, "Type": "A", "TTL": 300,
            "ResourceRecords": [{"Value": "192.0.2.1"}]}}]})

    planned = sync(client, write_fleet(tmp_path))

    deleted = [c.record for c in planned.changes if c.action == "DELETE"]
    assert len(deleted) == 1
    assert deleted[0]["ResourceRecords"] == [{"Value": "192.0.2.1"}]
    values = [r["ResourceRecords"][0]["Value"] for r in records(client, zone_id)]
    assert "192.0.2.1" not in values


def test_unknown_latency_region_rejected(tmp_path, aws):
    client, _ = aws
    config = write_fleet(tmp_path)
    fleet = load(config)
    fleet.regions["fr-par-1"].latency_region = "mars-north-1"
    with pytest.raises(ConfigError, match="mars-north-1"):
        dns.prepare(client, fleet, ADDRESSES)


def test_address_option_parsing(tmp_path):
    fleet = load(write_fleet(tmp_path))
    parsed = dns.parse_address_options(
        ["eu-west-1=198.51.100.1", "eu-west-1=2001:db8::1"], fleet)
    assert parsed == {"eu-west-1": ["198.51.100.1", "2001:db8::1"]}
    with pytest.raises(ConfigError, match="REGION=IP"):
        dns.parse_address_options(["198.51.100.1"], fleet)
    with pytest.raises(ConfigError, match="unknown region 'nowhere'"):
        dns.parse_address_options(["nowhere=198.51.100.1"], fleet)
    with pytest.raises(ConfigError, match="not an IPv4 or IPv6"):
        dns.parse_address_options(["eu-west-1=box.example"], fleet)


def test_address_from_ssh_config(tmp_path):
    fleet = load(write_fleet(tmp_path))
    box_dir = fleet.regions["us-east-1"].box_dir
    box_dir.mkdir(parents=True)
    (box_dir / "ssh-config").write_text(
        "Host us-east-1\n  HostName 198.51.100.9\n  User ubuntu\n")
    found = dns.box_addresses(fleet, {"eu-west-1": ["198.51.100.1"]})
    assert found == {"eu-west-1": ["198.51.100.1"], "us-east-1": ["198.51.100.9"]}


def test_task_plans_then_applies(tmp_path, aws, capsys):
    from invoke import Context

    from fleet.cli.dns import dns as dns_task

    client, zone_id = aws
    config = str(write_fleet(tmp_path))
    options = [f"{region}={ips[0]}" for region, ips in ADDRESSES.items()]

    dns_task(Context(), config=config, address=options)
    assert "--apply" in capsys.readouterr().out
    assert records(client, zone_id) == []

    dns_task(Context(), config=config, address=options, apply=True)
    assert "3 health check(s) created" in capsys.readouterr().out
    assert len(records(client, zone_id)) == 3

    dns_task(Context(), config=config, address=options, apply=True)
    assert "No change" in capsys.readouterr().out


def test_task_collision_exits(tmp_path, aws):
    from invoke import Context, Exit

    from fleet.cli.dns import dns as dns_task

    config = str(write_fleet(tmp_path, scaleway={"fr-par-1": "us-east-1"}))
    with pytest.raises(Exit) as raised:
        dns_task(Context(), config=config, address=["eu-west-1=198.51.100.1"])
    assert raised.value.code == 2
    assert "us-east-1" in raised.value.message


def test_private_address_warned(tmp_path, aws):
    client, _ = aws
    addresses = {**ADDRESSES, "eu-west-1": ["10.0.0.5"], "us-east-1": ["8.8.4.4"]}
    planned = sync(client, write_fleet(tmp_path), addresses, apply=False)
    warned = " ".join(planned.warnings)
    assert "10.0.0.5" in warned
    assert "8.8.4.4" not in warned


def test_address_from_manifest(tmp_path):
    from fleet.manifest import Manifest

    fleet = load(write_fleet(tmp_path))
    region = fleet.regions["eu-west-1"]
    manifest = Manifest.load(fleet, region)
    manifest.record("instance", "i-0123456789abcdef0", "aws",
                    {"project": "vatrates"}, address="198.51.100.7")
    manifest.set_address("198.51.100.7")
    box_dir = region.box_dir
    (box_dir / "ssh-config").write_text("Host eu-west-1\n  HostName 198.51.100.99\n")

    assert dns.manifest_addresses(region) == ["198.51.100.7"]
    assert dns.box_addresses(fleet)["eu-west-1"] == ["198.51.100.7"]
