"""Find and delete cloud resources the builder tagged that no manifest owns.

Every resource the builder creates carries the tag `project` (plus `region`
and `run`) and is listed in `boxes/<region>/manifest.json`. A resource that
has the tag but appears in no manifest is left over from an interrupted run,
a deleted checkout or a manual cleanup, and it still costs money. The sweep
covers EC2 instances, key pairs, security groups and volumes in every AWS
region the fleet uses, and Route53 health checks.

A health check is owned while a manifest exists for the region in its
`region` tag (the box still exists; `invoke dns` replaces its own stale
checks), while a manifest lists its id, or while a record of the shared
name still uses it (Route53 refuses to delete a check in use).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fleet import dns
from fleet.errors import CloudError, ConfigError
from fleet.regions import Fleet

log = logging.getLogger(__name__)

GLOBAL = "global"  # aws_region of Route53 resources
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
TERMINATE_TIMEOUT = 300.0  # seconds to wait for instances before deleting the rest
# Deleting in this order frees what the next kind depends on: a security
# group or volume cannot go while an instance uses it.
DELETE_ORDER = ("instance", "volume", "security_group", "key_pair", "health_check")

Ec2Factory = Callable[[str], Any]


@dataclass
class Leftover:
    """One tagged resource that no manifest owns."""

    kind: str
    id: str
    aws_region: str
    tags: dict[str, str] = field(default_factory=dict)
    detail: str = ""


@dataclass
class Ownership:
    """Resource ids and regions that the manifests under boxes/ still own."""

    ids: set[str] = field(default_factory=set)
    regions: set[str] = field(default_factory=set)
    aws_regions: set[str] = field(default_factory=set)


def manifests_dir(fleet: Fleet) -> Path:
    """Return the boxes/ directory next to the settings file."""
    return fleet.path.parent / "boxes"


def read_ownership(fleet: Fleet) -> Ownership:
    """Collect resource ids and regions from every boxes/*/manifest.json."""
    owned = Ownership()
    for path in sorted(manifests_dir(fleet).glob("*/manifest.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            # A manifest that cannot be read may own anything, so the sweep stops.
            raise ConfigError(
                f"{path}: cannot read ({error}); fix or restore it before a "
                f"sweep, because the resources it lists would look unowned"
            ) from None
        region = data.get("region") or path.parent.name
        owned.regions.add(region)
        for resource in data.get("resources", []):
            for key in ("id", "name", "key_name", "group_id"):
                if resource.get(key):
                    owned.ids.add(str(resource[key]))
            if resource.get("provider") == "aws":
                owned.aws_regions.add(resource.get("aws_region") or region)
    return owned


def aws_regions_to_scan(fleet: Fleet, owned: Ownership,
                        extra: list[str] | None = None) -> list[str]:
    """Return the AWS regions of the fleet, of the manifests and any extra ones."""
    names = {r.name for r in fleet.regions.values() if r.provider == "aws"}
    names |= owned.aws_regions
    names |= set(extra or [])
    return sorted(names)


def _tags(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


def _name_of(tags: dict[str, str]) -> str:
    return tags.get("Name", "")


def list_ec2(ec2: Any, aws_region: str, project: str) -> list[Leftover]:
    """Return every instance, key pair, security group and volume tagged for us."""
    tag_filter = [{"Name": "tag:project", "Values": [project]}]
    found: list[Leftover] = []

    pages = ec2.get_paginator("describe_instances").paginate(Filters=[
        *tag_filter, {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}])
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = _tags(instance.get("Tags"))
                state = instance["State"]["Name"]
                detail = f"{state} {instance.get('InstanceType', '')}"
                found.append(Leftover("instance", instance["InstanceId"], aws_region,
                                      tags, detail.strip()))

    for pair in ec2.describe_key_pairs(Filters=tag_filter)["KeyPairs"]:
        found.append(Leftover("key_pair", pair.get("KeyPairId") or pair["KeyName"],
                              aws_region, _tags(pair.get("Tags")), pair["KeyName"]))

    pages = ec2.get_paginator("describe_security_groups").paginate(Filters=tag_filter)
    for page in pages:
        for group in page["SecurityGroups"]:
            found.append(Leftover("security_group", group["GroupId"], aws_region,
                                  _tags(group.get("Tags")), group.get("GroupName", "")))

    pages = ec2.get_paginator("describe_volumes").paginate(Filters=tag_filter)
    for page in pages:
        for volume in page["Volumes"]:
            detail = f"{volume['State']} {volume.get('Size', '?')} GB"
            found.append(Leftover("volume", volume["VolumeId"], aws_region,
                                  _tags(volume.get("Tags")), detail))

    # The server-side filter is the fast path. This check keeps a filter that
    # an endpoint ignores from widening the sweep to untagged resources.
    return [item for item in found if item.tags.get("project") == project]


def list_health_checks(route53: Any, project: str) -> list[Leftover]:
    """Return the Route53 health checks tagged for this project."""
    found = []
    for check in dns.list_health_checks(route53, project):
        config = check.config
        detail = (f"{config.get('Type', '')} {config.get('IPAddress', '')}:"
                  f"{config.get('Port', '')}")
        found.append(Leftover("health_check", check.id, GLOBAL,
                              {"project": project, "region": check.region}, detail))
    return found


def health_checks_in_use(route53: Any, domain: str) -> set[str]:
    """Return the ids of health checks the shared name's records use."""
    try:
        zone_id, _ = dns.find_zone(route53, domain)
    except CloudError:
        return set()
    records = dns.read_records(route53, zone_id, domain)
    return {r["HealthCheckId"] for r in records if r.get("HealthCheckId")}


def _is_owned(item: Leftover, owned: Ownership) -> bool:
    if item.id in owned.ids:
        return True
    if item.kind == "key_pair" and item.detail in owned.ids:
        return True
    return item.kind == "health_check" and item.tags.get("region") in owned.regions


def find_leftovers(fleet: Fleet, ec2_factory: Ec2Factory, route53: Any,
                   extra_regions: list[str] | None = None) -> list[Leftover]:
    """Return every tagged resource that no manifest owns, in deletion order."""
    owned = read_ownership(fleet)
    project = fleet.project.name
    candidates: list[Leftover] = []
    for aws_region in aws_regions_to_scan(fleet, owned, extra_regions):
        candidates.extend(list_ec2(ec2_factory(aws_region), aws_region, project))
    in_use = health_checks_in_use(route53, fleet.project.domain)
    candidates.extend(c for c in list_health_checks(route53, project)
                      if c.id not in in_use)

    leftovers = [item for item in candidates if not _is_owned(item, owned)]
    leftovers.sort(key=lambda item: (DELETE_ORDER.index(item.kind), item.aws_region,
                                     item.id))
    return leftovers


@dataclass
class Deletion:
    """Result of deleting one leftover: success and the message."""

    item: Leftover
    ok: bool
    message: str


def delete_leftovers(leftovers: list[Leftover], ec2_factory: Ec2Factory,
                     route53: Any, wait: float = TERMINATE_TIMEOUT) -> list[Deletion]:
    """Delete leftovers in dependency order; report each one, going on past errors."""
    results: list[Deletion] = []
    clients: dict[str, Any] = {}

    def ec2_for(aws_region: str) -> Any:
        if aws_region not in clients:
            clients[aws_region] = ec2_factory(aws_region)
        return clients[aws_region]

    instances: dict[str, list[str]] = {}
    for item in leftovers:
        if item.kind == "instance":
            instances.setdefault(item.aws_region, []).append(item.id)
    for aws_region, ids in instances.items():
        results.extend(_terminate(ec2_for(aws_region), aws_region, ids, leftovers,
                                  wait))

    for item in leftovers:
        if item.kind == "instance":
            continue
        try:
            _delete_one(item, ec2_for, route53)
        except (BotoCoreError, ClientError) as error:
            log.error("event=sweep_delete_failed kind=%s id=%s region=%s error=%s",
                      item.kind, item.id, item.aws_region, error)
            results.append(Deletion(item, False, str(error)))
            continue
        log.info("event=sweep_deleted kind=%s id=%s region=%s", item.kind, item.id,
                 item.aws_region)
        results.append(Deletion(item, True, "deleted"))
    return results


def _terminate(ec2: Any, aws_region: str, ids: list[str], leftovers: list[Leftover],
               wait: float) -> list[Deletion]:
    items = [i for i in leftovers if i.kind == "instance" and i.id in ids]
    try:
        ec2.terminate_instances(InstanceIds=ids)
        waiter = ec2.get_waiter("instance_terminated")
        delay = 5
        waiter.wait(InstanceIds=ids, WaiterConfig={
            "Delay": delay, "MaxAttempts": max(1, int(wait // delay))})
    except (BotoCoreError, ClientError) as error:
        log.error("event=sweep_terminate_failed region=%s ids=%s error=%s",
                  aws_region, ",".join(ids), error)
        return [Deletion(item, False, str(error)) for item in items]
    log.info("event=sweep_terminated region=%s ids=%s", aws_region, ",".join(ids))
    return [Deletion(item, True, "terminated") for item in items]


def _delete_one(item: Leftover, ec2_for: Callable[[str], Any], route53: Any) -> None:
    if item.kind == "health_check":
        route53.delete_health_check(HealthCheckId=item.id)
        return
    ec2 = ec2_for(item.aws_region)
    if item.kind == "volume":
        ec2.delete_volume(VolumeId=item.id)
    elif item.kind == "security_group":
        _delete_security_group(ec2, item.id)
    elif item.kind == "key_pair":
        # Key names are unique per region. The detail column contains the name.
        ec2.delete_key_pair(KeyName=item.detail)
    else:
        raise ValueError(f"unknown leftover kind {item.kind!r}")


def _delete_security_group(ec2: Any, group_id: str, attempts: int = 6) -> None:
    # A terminated instance's network interface lets go of its group a little
    # after termination, so DependencyViolation is retried a few times.
    for attempt in range(attempts):
        try:
            ec2.delete_security_group(GroupId=group_id)
            return
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code != "DependencyViolation" or attempt == attempts - 1:
                raise
            time.sleep(5)
