"""Latency-based DNS for the shared name: one Route53 record per box.

Every box gets, under `Fleet.project.domain`, an A record (and an AAAA record
when it has an IPv6 address) with latency routing: the set identifier is the
region name and the latency region is the AWS region Route53 measures
against. That is the region itself for AWS boxes and `latency_region` for
Scaleway zones and lab boxes; Route53 only measures latency to AWS regions,
so for a box outside AWS the routing is as good as that mapping.

Each box also gets a Route53 health check (HTTPS on the box's own address,
the shared name as SNI and Host, path /readyz), attached to its records, so
Route53 stops returning a failing box.

`plan()` compares what Route53 holds with what the fleet wants and returns
the change set; `apply()` creates missing health checks and sends every
record change in one ChangeBatch. A second run plans nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import botocore.session
from botocore.exceptions import ClientError

from fleet.errors import CloudError, ConfigError
from fleet.regions import Fleet, Region

log = logging.getLogger(__name__)

RECORD_TTL = 60  # seconds; short, so a replaced box is picked up quickly
HEALTH_PATH = "/readyz"
HEALTH_INTERVAL = 30  # seconds between checks from each Route53 checker
HEALTH_FAILURES = 3  # failed checks in a row before Route53 calls a box down
DEFAULT_HTTPS_PORT = 443
ROUTED_TYPES = ("A", "AAAA")
TAG_BATCH = 10
ADDRESS_KEYS = ("public_ip", "public_ipv4", "public_ipv6", "ipv6", "public_address",
                "address")  # ListTagsForResources accepts at most 10 ids per call


# ----- boxes and their addresses -------------------------------------------


@dataclass(frozen=True)
class Box:
    """One region's entry in the latency record set."""

    region: str
    latency_region: str
    addresses: tuple[str, ...]
    https_port: int = DEFAULT_HTTPS_PORT

    def values(self, record_type: str) -> list[str]:
        """Return the box's addresses of one record type (A or AAAA)."""
        version = 4 if record_type == "A" else 6
        return [a for a in self.addresses if ipaddress.ip_address(a).version == version]

    @property
    def health_address(self) -> str:
        """Address the health check probes: the IPv4 one when there is one."""
        return (self.values("A") or self.values("AAAA"))[0]


def route53_latency_regions() -> tuple[str, ...]:
    """Return the latency regions Route53 accepts (botocore's bundled model)."""
    model = botocore.session.get_session().get_service_model("route53")
    return tuple(model.shape_for("ResourceRecordSetRegion").enum)


def parse_address_options(values: list[str] | None, fleet: Fleet
                          ) -> dict[str, list[str]]:
    """Parse `--address REGION=IP` options into addresses per region."""
    addresses: dict[str, list[str]] = {}
    for value in values or []:
        region, sep, address = value.partition("=")
        region, address = region.strip(), address.strip()
        if not sep or not region or not address:
            raise ConfigError(
                f"--address {value!r} is invalid; use REGION=IP, for example "
                f"--address eu-west-1=203.0.113.10"
            )
        if region not in fleet.regions:
            raise ConfigError(
                f"--address {value!r}: unknown region {region!r} in {fleet.path}; "
                f"valid regions: {', '.join(fleet.regions)}"
            )
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(
                f"--address {value!r}: {address!r} is not an IPv4 or IPv6 address"
            ) from None
        addresses.setdefault(region, []).append(str(parsed))
    return addresses


def manifest_addresses(region: Region) -> list[str]:
    """Return the public addresses recorded in `boxes/<region>/manifest.json`."""
    path = region.box_dir / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{path}: cannot read the box manifest ({error}); rebuild the box or "
            f"pass --address {region.name}=IP"
        ) from None
    return _addresses_in(data)


def _addresses_in(data: Any) -> list[str]:
    # NOTE: the providers do not share one key for the public address yet, so
    # every usual key is read, at top level or inside a resource entry. Values
    # that do not parse as IP addresses are ignored.
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ADDRESS_KEYS and value:
                found.extend(value if isinstance(value, list) else [value])
            elif isinstance(value, (dict, list)):
                found.extend(_addresses_in(value))
    elif isinstance(data, list):
        for item in data:
            found.extend(_addresses_in(item))
    valid = []
    for value in found:
        try:
            valid.append(str(ipaddress.ip_address(str(value))))
        except ValueError:
            continue
    return list(dict.fromkeys(valid))


def ssh_config_address(region: Region) -> list[str]:
    """Return the HostName of `boxes/<region>/ssh-config` when it is an IP."""
    path = region.box_dir / "ssh-config"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key.lower() == "hostname":
            try:
                return [str(ipaddress.ip_address(value.strip()))]
            except ValueError:
                return []
    return []


def box_addresses(fleet: Fleet, overrides: dict[str, list[str]] | None = None
                  ) -> dict[str, list[str]]:
    """Return each region's public addresses: option, else manifest, else ssh-config."""
    overrides = overrides or {}
    addresses: dict[str, list[str]] = {}
    for region in fleet.regions.values():
        found = (overrides.get(region.name) or manifest_addresses(region)
                 or ssh_config_address(region))
        if found:
            addresses[region.name] = found
    return addresses


def https_port(region: Region) -> int:
    """Return the port the box serves HTTPS on, as seen from outside."""
    return region.https_port or DEFAULT_HTTPS_PORT


def check_latency_regions(fleet: Fleet) -> None:
    """Reject unknown latency regions and two boxes sharing one, before any call."""
    valid = route53_latency_regions()
    users: dict[str, str] = {}
    problems: list[str] = []
    for region in fleet.regions.values():
        latency = region.latency_region
        if not latency:
            continue
        if latency not in valid:
            problems.append(
                f"[regions.{region.name}] latency region {latency!r} is not one "
                f"Route53 accepts; use one of {', '.join(valid)}"
            )
            continue
        if latency in users:
            problems.append(
                f"[regions.{region.name}] and [regions.{users[latency]}] both map "
                f"to AWS latency region {latency!r} for {fleet.project.domain}; "
                f"Route53 allows one latency record per region and name, so set "
                f"another latency_region or remove one box"
            )
        else:
            users[latency] = region.name
    if problems:
        raise ConfigError(f"{fleet.path}:\n" + "\n".join(f"  - {p}" for p in problems))


def fleet_boxes(fleet: Fleet, addresses: dict[str, list[str]]
                ) -> tuple[list[Box], list[str]]:
    """Return the boxes to route to and the regions left out, with the reason."""
    check_latency_regions(fleet)
    boxes: list[Box] = []
    skipped: list[str] = []
    for region in fleet.regions.values():
        if not region.latency_region:
            skipped.append(f"{region.name}: no latency region (a {region.provider} "
                           f"region without latency_region)")
            continue
        found = addresses.get(region.name)
        if not found:
            skipped.append(f"{region.name}: no public address known; build the box "
                           f"or pass --address {region.name}=IP")
            continue
        boxes.append(Box(region.name, region.latency_region, tuple(found),
                         https_port(region)))
    return boxes, skipped


# ----- health checks --------------------------------------------------------


def health_check_config(box: Box, domain: str) -> dict[str, Any]:
    """Return the HealthCheckConfig Route53 gets for one box."""
    return {
        "IPAddress": box.health_address,
        "Port": box.https_port,
        "Type": "HTTPS",
        "ResourcePath": HEALTH_PATH,
        "FullyQualifiedDomainName": domain,
        "EnableSNI": True,
        "RequestInterval": HEALTH_INTERVAL,
        "FailureThreshold": HEALTH_FAILURES,
    }


def _config_matches(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(existing.get(key) == value for key, value in wanted.items())


def caller_reference(project: str, region: str, config: dict[str, Any]) -> str:
    """Return a CallerReference that is the same for the same box and settings."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return f"{project}:{region}:{digest[:16]}"


@dataclass
class HealthCheck:
    """A Route53 health check tagged by the builder."""

    id: str
    region: str
    caller_reference: str
    config: dict[str, Any]


def list_health_checks(client: Any, project: str) -> list[HealthCheck]:
    """Return every health check whose `project` tag is this project."""
    checks: dict[str, dict[str, Any]] = {}
    paginator = client.get_paginator("list_health_checks")
    for page in paginator.paginate():
        for check in page["HealthChecks"]:
            checks[check["Id"]] = check

    ids = list(checks)
    tagged: list[HealthCheck] = []
    for start in range(0, len(ids), TAG_BATCH):
        batch = ids[start:start + TAG_BATCH]
        answer = client.list_tags_for_resources(
            ResourceType="healthcheck", ResourceIds=batch)
        for tag_set in answer["ResourceTagSets"]:
            tags = {t["Key"]: t["Value"] for t in tag_set.get("Tags", [])}
            if tags.get("project") != project:
                continue
            check = checks[tag_set["ResourceId"]]
            tagged.append(HealthCheck(
                id=check["Id"],
                region=tags.get("region", ""),
                caller_reference=check.get("CallerReference", ""),
                config=check.get("HealthCheckConfig", {}),
            ))
    return tagged


# ----- records --------------------------------------------------------------


def fqdn(name: str) -> str:
    """Return a DNS name in Route53's form: lower case, one trailing dot."""
    return name.lower().rstrip(".") + "."


def read_records(client: Any, zone_id: str, name: str) -> list[dict[str, Any]]:
    """Return the A and AAAA record sets Route53 has for exactly `name`."""
    wanted = fqdn(name)
    records: list[dict[str, Any]] = []
    paginator = client.get_paginator("list_resource_record_sets")
    pages = paginator.paginate(HostedZoneId=zone_id, StartRecordName=wanted)
    for page in pages:
        for record in page["ResourceRecordSets"]:
            if fqdn(record["Name"]) != wanted:
                return records
            if record["Type"] in ROUTED_TYPES:
                records.append(record)
    return records


def find_zone(client: Any, domain: str, zone_id: str | None = None
              ) -> tuple[str, str]:
    """Return (id, name) of the public hosted zone that contains `domain`."""
    if zone_id:
        zone = client.get_hosted_zone(Id=zone_id)["HostedZone"]
        name = zone["Name"]
        if fqdn(domain) != name and not fqdn(domain).endswith("." + name):
            raise ConfigError(
                f"hosted zone {zone_id} is {zone['Name']!r}, which does not "
                f"contain {domain!r}; pass the zone of the shared name"
            )
        return zone["Id"].split("/")[-1], zone["Name"]

    best: tuple[str, str] | None = None
    paginator = client.get_paginator("list_hosted_zones")
    for page in paginator.paginate():
        for zone in page["HostedZones"]:
            if zone.get("Config", {}).get("PrivateZone"):
                continue
            name = zone["Name"]
            contains = fqdn(domain) == name or fqdn(domain).endswith("." + name)
            if contains and (best is None or len(name) > len(best[1])):
                best = (zone["Id"].split("/")[-1], name)
    if best is None:
        raise CloudError(
            f"no public Route53 hosted zone contains {domain!r}; create one for "
            f"its parent domain or pass --zone-id"
        )
    return best


def desired_record(box: Box, record_type: str, domain: str,
                   health_check_id: str | None) -> dict[str, Any]:
    """Return the ResourceRecordSet Route53 should hold for one box and type."""
    record: dict[str, Any] = {
        "Name": fqdn(domain),
        "Type": record_type,
        "SetIdentifier": box.region,
        "Region": box.latency_region,
        "TTL": RECORD_TTL,
        "ResourceRecords": [{"Value": v} for v in sorted(box.values(record_type))],
    }
    if health_check_id:
        record["HealthCheckId"] = health_check_id
    return record


def _comparable(record: dict[str, Any]) -> tuple[Any, ...]:
    values = sorted(r["Value"] for r in record.get("ResourceRecords", []))
    return (fqdn(record["Name"]), record["Type"], record.get("SetIdentifier"),
            record.get("Region"), record.get("TTL"), tuple(values),
            record.get("HealthCheckId"), json.dumps(record.get("AliasTarget"),
                                                    sort_keys=True))


# ----- the plan -------------------------------------------------------------


@dataclass
class Change:
    """One entry of the ChangeBatch, with the reason shown to the operator."""

    action: str  # CREATE or DELETE
    record: dict[str, Any]
    reason: str
    box: Box | None = None  # set on CREATEs whose health check is still to make


@dataclass
class Plan:
    """Planned work for `apply()`: health checks to create, then one ChangeBatch."""

    zone_id: str
    domain: str
    project: str
    changes: list[Change] = field(default_factory=list)
    new_checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale_checks: list[str] = field(default_factory=list)
    unchanged: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.changes and not self.new_checks and not self.stale_checks


def plan(client: Any, fleet: Fleet, boxes: list[Box], zone_id: str,
         skipped: list[str] | None = None) -> Plan:
    """Compare Route53 with the fleet and return the changes needed."""
    domain = fleet.project.domain
    result = Plan(zone_id, domain, fleet.project.name, skipped=list(skipped or []))
    existing = read_records(client, zone_id, domain)
    checks = list_health_checks(client, fleet.project.name)

    check_ids = _choose_health_checks(result, fleet.project.name, boxes, checks)
    wanted = _wanted_records(boxes, domain, check_ids)
    kept_regions = {name for name in fleet.regions} - {b.region for b in boxes}

    by_key = {(r["Type"], r.get("SetIdentifier")): r for r in existing}
    for key, record in wanted.items():
        old = by_key.get(key)
        if old is None:
            result.changes.append(Change("CREATE", record, "new box", _box_of(
                boxes, key[1])))
        elif _comparable(old) != _comparable(record):
            result.changes.append(Change("DELETE", old, "replaced"))
            result.changes.append(Change("CREATE", record, "changed", _box_of(
                boxes, key[1])))
        else:
            result.unchanged.append(record)

    for key, old in by_key.items():
        if key in wanted:
            continue
        identifier = key[1]
        if identifier in kept_regions and old.get("Region"):
            result.unchanged.append(old)
            continue
        reason = ("not a latency record" if not identifier
                  else f"set identifier {identifier!r} is no box in {fleet.path.name}")
        result.changes.append(Change("DELETE", old, reason))

    result.warnings.extend(unreachable_warnings(boxes))
    _reject_region_clash(result, fleet)
    _collect_stale_checks(result, check_ids)
    return result


def unreachable_warnings(boxes: list[Box]) -> list[str]:
    """Warn about addresses Route53's health checkers cannot reach.

    The Route53 API reference (HealthCheckConfig, IPAddress) states that it
    cannot check endpoints in local, private, non-routable or multicast
    ranges, so such a box's check never passes.
    """
    warnings = []
    for box in boxes:
        address = ipaddress.ip_address(box.health_address)
        if not address.is_global:
            warnings.append(
                f"{box.region}: {address} is not a public address, so Route53's "
                f"health checkers cannot reach it and will mark the box unhealthy"
            )
    return warnings


def _box_of(boxes: list[Box], region: str) -> Box | None:
    return next((b for b in boxes if b.region == region), None)


def _choose_health_checks(result: Plan, project: str, boxes: list[Box],
                          checks: list[HealthCheck]) -> dict[str, str | None]:
    # Reuse a tagged check with the same settings; otherwise plan a new one
    # (its id is known only after apply creates it).
    chosen: dict[str, str | None] = {}
    for box in boxes:
        config = health_check_config(box, result.domain)
        reference = caller_reference(project, box.region, config)
        match = next(
            (c for c in checks if c.region == box.region and (
                c.caller_reference == reference or _config_matches(c.config, config))),
            None,
        )
        if match:
            chosen[box.region] = match.id
        else:
            chosen[box.region] = None
            result.new_checks[box.region] = config
    return chosen


def _wanted_records(boxes: list[Box], domain: str,
                    check_ids: dict[str, str | None]
                    ) -> dict[tuple[str, str], dict[str, Any]]:
    wanted = {}
    for box in boxes:
        for record_type in ROUTED_TYPES:
            if box.values(record_type):
                wanted[(record_type, box.region)] = desired_record(
                    box, record_type, domain, check_ids[box.region])
    return wanted


def _reject_region_clash(result: Plan, fleet: Fleet) -> None:
    # A record kept as it is (its box has no known address this run) still
    # uses its latency region, and Route53 rejects a second one beside it.
    created = {(c.record["Type"], c.record["Region"]): c.record["SetIdentifier"]
               for c in result.changes if c.action == "CREATE"}
    for record in result.unchanged:
        key = (record["Type"], record.get("Region"))
        other = created.get(key)
        if other and other != record.get("SetIdentifier"):
            raise ConfigError(
                f"{fleet.path}: box {other!r} would share latency region "
                f"{key[1]!r} with the existing {key[0]} record of "
                f"{record['SetIdentifier']!r}; pass --address "
                f"{record['SetIdentifier']}=IP so it is planned too, or change "
                f"one latency_region"
            )


def _collect_stale_checks(result: Plan, check_ids: dict[str, str | None]) -> None:
    # Health checks referenced only by records this plan deletes can go once
    # the ChangeBatch is applied; a check still attached cannot be deleted.
    still_used = {r.get("HealthCheckId") for r in result.unchanged}
    still_used.update(c.record.get("HealthCheckId") for c in result.changes
                      if c.action == "CREATE")
    still_used.update(i for i in check_ids.values() if i)
    for change in result.changes:
        check_id = change.record.get("HealthCheckId")
        stale = change.action == "DELETE" and check_id and check_id not in still_used
        if stale and check_id not in result.stale_checks:
            result.stale_checks.append(check_id)


# ----- apply ----------------------------------------------------------------


@dataclass
class ApplyResult:
    """Result of apply(): the change id and the health checks made or deleted."""

    change_id: str | None
    created_checks: dict[str, str]
    deleted_checks: list[str]


def create_health_check(client: Any, project: str, region: str,
                        config: dict[str, Any]) -> str:
    """Create and tag one box's health check; return its id."""
    reference = caller_reference(project, region, config)
    try:
        answer = client.create_health_check(
            CallerReference=reference, HealthCheckConfig=config)
    except ClientError as error:
        if error.response["Error"]["Code"] != "HealthCheckAlreadyExists":
            raise
        # Route53 keeps the reference of a deleted check; make it unique.
        answer = client.create_health_check(
            CallerReference=f"{reference}:{time.time_ns()}", HealthCheckConfig=config)
    check_id = answer["HealthCheck"]["Id"]
    client.change_tags_for_resource(
        ResourceType="healthcheck",
        ResourceId=check_id,
        AddTags=[
            {"Key": "project", "Value": project},
            {"Key": "region", "Value": region},
            {"Key": "Name", "Value": f"{project} {region}"},
        ],
    )
    log.info("event=health_check_created region=%s id=%s", region, check_id)
    return check_id


def apply(client: Any, planned: Plan) -> ApplyResult:
    """Create the planned health checks, send the ChangeBatch, drop stale checks."""
    created: dict[str, str] = {}
    for region, config in planned.new_checks.items():
        created[region] = create_health_check(client, planned.project, region, config)

    changes = []
    for change in planned.changes:
        record = dict(change.record)
        if change.action == "CREATE" and change.box and "HealthCheckId" not in record:
            record["HealthCheckId"] = created[change.box.region]
        changes.append({"Action": change.action, "ResourceRecordSet": record})

    change_id = None
    if changes:
        answer = client.change_resource_record_sets(
            HostedZoneId=planned.zone_id,
            ChangeBatch={
                "Comment": f"{planned.project}: latency records for {planned.domain}",
                "Changes": changes,
            },
        )
        change_id = answer["ChangeInfo"]["Id"]
        log.info("event=records_changed zone=%s changes=%d change=%s",
                 planned.zone_id, len(changes), change_id)

    for check_id in planned.stale_checks:
        client.delete_health_check(HealthCheckId=check_id)
        log.info("event=health_check_deleted id=%s", check_id)
    return ApplyResult(change_id, created, list(planned.stale_checks))


def prepare(client: Any, fleet: Fleet, overrides: dict[str, list[str]] | None = None,
            zone_id: str | None = None) -> tuple[Plan, str]:
    """Check the fleet, then read Route53 and return (plan, zone name).

    Every check that needs no AWS call (latency regions, collisions,
    addresses) runs first, so a bad fleet is rejected before any request.
    """
    boxes, skipped = fleet_boxes(fleet, box_addresses(fleet, overrides))
    if not boxes:
        reasons = "; ".join(skipped) or f"{fleet.path} defines no region"
        raise ConfigError(f"no box to route to: {reasons}")
    zone_id, zone_name = find_zone(client, fleet.project.domain, zone_id)
    return plan(client, fleet, boxes, zone_id, skipped), zone_name


def route53_client() -> Any:
    """Return a boto3 Route53 client (a global service, signed for us-east-1)."""
    import boto3

    return boto3.client("route53", region_name="us-east-1")


def describe_value(record: dict[str, Any]) -> str:
    """Return a record's values as one short string for tables."""
    return ", ".join(r["Value"] for r in record.get("ResourceRecords", []))
