"""Create the AWS resources an instance needs before `vagrant up`, with tags.

vagrant-aws launches the instance but expects the key pair and security
group to exist already. They are created here with boto3, tagged with
project, region and run, and recorded in the region's manifest. The instance
id that Vagrant stores is recorded after `vagrant up`.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fleet.errors import CloudError
from fleet.manifest import Manifest, resource_tags
from fleet.regions import Fleet, Region
from fleet.render import security_group_name

log = logging.getLogger(__name__)

OPEN_PORTS = (22, 80, 443)


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def _client(session: Any, region: Region) -> Any:
    return session.client("ec2", region_name=region.name)


def ensure_security_group(session: Any, fleet: Fleet, region: Region,
                          run_id: str) -> str:
    """Return the id of the region's group allowing TCP 22/80/443, creating it."""
    ec2 = _client(session, region)
    name = security_group_name(fleet, region)
    try:
        found = ec2.describe_security_groups(
            Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
        if found:
            return found[0]["GroupId"]

        tags = resource_tags(fleet, region, run_id)
        group_id = ec2.create_security_group(
            GroupName=name,
            Description=f"{fleet.project.name} box in {region.name}: ssh, http, https",
            TagSpecifications=[{"ResourceType": "security-group",
                                "Tags": _tag_list(tags)}],
        )["GroupId"]
        Manifest.load(fleet, region).record("security_group", group_id, "aws", tags,
                                            name=name)
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
             "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
             "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
            for port in OPEN_PORTS
        ])
    except (ClientError, BotoCoreError) as error:
        raise CloudError(f"security group {name} in {region.name}: {error}") from None
    log.info("event=security_group_created region=%s group=%s", region.name, group_id)
    return group_id


def public_key_of(region: Region) -> bytes:
    """Return the OpenSSH public key of the region's private key file."""
    from cryptography.hazmat.primitives import serialization

    path = region.private_key_path
    if path is None:
        raise CloudError(f"[regions.{region.name}] sets no private_key")
    data = path.read_bytes()
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise CloudError(f"{path}: cannot read the private key ({error}); it must "
                         f"be an unencrypted PEM or OpenSSH key") from None
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)


def ensure_key_pair(session: Any, fleet: Fleet, region: Region, run_id: str) -> str:
    """Import the region's key pair from its private key unless it exists."""
    ec2 = _client(session, region)
    name = region.key_pair
    try:
        found = ec2.describe_key_pairs(
            Filters=[{"Name": "key-name", "Values": [name]}])["KeyPairs"]
        if found:
            return found[0].get("KeyPairId", name)

        tags = resource_tags(fleet, region, run_id)
        key_id = ec2.import_key_pair(
            KeyName=name,
            PublicKeyMaterial=public_key_of(region),
            TagSpecifications=[{"ResourceType": "key-pair", "Tags": _tag_list(tags)}],
        ).get("KeyPairId", name)
    except (ClientError, BotoCoreError) as error:
        raise CloudError(f"key pair {name} in {region.name}: {error}") from None
    Manifest.load(fleet, region).record("key_pair", key_id, "aws", tags, name=name)
    log.info("event=key_pair_imported region=%s key_pair=%s", region.name, name)
    return key_id


def record_instance(session: Any, fleet: Fleet, region: Region,
                    run_id: str) -> str | None:
    """Record the instance vagrant-aws stored under .vagrant/ and its address."""
    id_file = region.box_dir / ".vagrant" / "machines" / region.name / "aws" / "id"
    if not id_file.exists():
        return None
    instance_id = id_file.read_text(encoding="utf-8").strip()
    manifest = Manifest.load(fleet, region)
    address = ""
    try:
        reservations = _client(session, region).describe_instances(
            InstanceIds=[instance_id])["Reservations"]
        for reservation in reservations:
            for instance in reservation["Instances"]:
                address = instance.get("PublicIpAddress", "") or address
    except (ClientError, BotoCoreError) as error:
        log.warning("event=describe_instance_failed region=%s instance=%s error=%s",
                    region.name, instance_id, error)
    entry = manifest.get("instance", instance_id)
    tags = entry["tags"] if entry else resource_tags(fleet, region, run_id)
    manifest.record("instance", instance_id, "aws", tags, address=address)
    manifest.set_address(address)
    return instance_id


def delete_recorded(session: Any, fleet: Fleet, region: Region) -> list[str]:
    """Delete the security groups and key pairs this checkout recorded."""
    ec2 = _client(session, region)
    manifest = Manifest.load(fleet, region)
    notes = []
    for entry in manifest.find("security_group"):
        try:
            ec2.delete_security_group(GroupId=entry["id"])
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code != "InvalidGroup.NotFound":
                notes.append(f"security group {entry['id']} kept: {code}")
                continue
        manifest.forget("security_group", entry["id"])
        notes.append(f"deleted {entry['id']}")
    for entry in manifest.find("key_pair"):
        ec2.delete_key_pair(KeyName=entry.get("name", entry["id"]))
        manifest.forget("key_pair", entry["id"])
        notes.append(f"deleted key pair {entry.get('name', entry['id'])}")
    for entry in manifest.find("instance"):
        # vagrant destroy has terminated it by now.
        manifest.forget("instance", entry["id"])
        manifest.set_address("")
    return notes
