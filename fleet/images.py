"""Resolve the Ubuntu machine image of a region from Canonical's publications.

AWS, in this order:
1. `ami` pinned in regions.toml (source "pinned");
2. with AWS credentials, Canonical's public SSM parameter
   /aws/service/canonical/ubuntu/server/<release>/stable/current/<arch>/hvm/
   <ebs-gp3 | ebs-gp2>/ami-id, then `describe_images` to check that the owner
   is Canonical (099720109477) and the architecture is the instance's;
3. without credentials, the catalogue cached in .cache/images/: the
   simplestreams file com.ubuntu.cloud:released:aws.json or the EC2 locator's
   releasesTable, which `invoke ami --refresh` downloads from
   cloud-images.ubuntu.com and `invoke ami --import-file FILE` copies in.

From a catalogue only the newest serial that matches the release, the
architecture, HVM and SSD storage in exactly that region is taken. There is
no fallback to paravirtual, instance-store, another region or another release.

Scaleway images are per zone: `scaleway_image()` queries the Marketplace API
for the image of one zone, and the result is never reused for another zone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleet.errors import ImageError
from fleet.regions import REPO_ROOT, UBUNTU_RELEASES, Region

log = logging.getLogger(__name__)

CANONICAL_OWNER = "099720109477"
SSM_PATH = (
    "/aws/service/canonical/ubuntu/server/{release}/stable/current/{arch}/hvm/"
    "{volume}/ami-id"
)
CACHE_DIR = REPO_ROOT / ".cache" / "images"
SIMPLESTREAMS_NAME = "aws.json"
RELEASES_TABLE_NAME = "releasesTable"
SIMPLESTREAMS_URL = (
    "https://cloud-images.ubuntu.com/releases/streams/v1/"
    "com.ubuntu.cloud:released:aws.json"
)
RELEASES_TABLE_URL = "https://cloud-images.ubuntu.com/locator/ec2/releasesTable"
FETCH_TIMEOUT = 30.0

_AMI_ID = re.compile(r"\bami-(?:[0-9a-f]{17}|[0-9a-f]{8})\b")
_EXACT_AMI_ID = re.compile(r"^ami-(?:[0-9a-f]{17}|[0-9a-f]{8})\Z")
# \Z, not $: "$" also matches before a trailing newline, which a serial
# must not contain because it is written into a Vagrantfile comment.
_SERIAL = re.compile(r"^[0-9]{8}(\.[0-9]+)?\Z")
# EC2 names the architectures "x86_64" and "arm64", while Ubuntu's catalogues
# and SSM paths use "amd64" and "arm64".
_EC2_ARCH = {"amd64": "x86_64", "arm64": "arm64"}


@dataclass(frozen=True)
class Image:
    """A resolved machine image and where it came from."""

    id: str
    serial: str
    source: str
    date: str
    region: str
    release: str
    arch: str


def default_cache_dir() -> Path:
    """Return $FLEET_IMAGE_CACHE if set, else .cache/images/ in the repository."""
    return Path(os.environ.get("FLEET_IMAGE_CACHE") or CACHE_DIR)


def volume_type(release: str) -> str:
    """Return the EBS volume type in Canonical's SSM path for a release.

    Images from 24.04 on are published for gp3 volumes, older ones for gp2.
    """
    major = int(release.split(".", 1)[0])
    return "ebs-gp3" if major >= 24 else "ebs-gp2"


def ssm_parameter(release: str, arch: str) -> str:
    return SSM_PATH.format(release=release, arch=arch, volume=volume_type(release))


def _serial_key(serial: str) -> tuple[int, ...]:
    return tuple(int(part) for part in serial.split("."))


# ----- simplestreams aws.json ------------------------------------------------


def pick_from_simplestreams(data: dict[str, Any], region: str, release: str,
                            arch: str) -> tuple[str, str]:
    """Return (ami id, serial) of the newest matching image in an aws.json.

    The file's products are keyed "com.ubuntu.cloud:server:<release>:<arch>".
    Each version (serial) lists items with `crsn` (the region), `virt` ("hvm"
    or "pv"), `root_store` ("ssd", "ssd-gp3", "instance", ...) and `id`.
    """
    products = data.get("products")
    if not isinstance(products, dict):
        raise ImageError("aws.json has no 'products' table; is it the simplestreams "
                         "file com.ubuntu.cloud:released:aws.json?")

    key = f"com.ubuntu.cloud:server:{release}:{arch}"
    product = products.get(key)
    if not isinstance(product, dict):
        raise ImageError(f"aws.json lists no product {key}; check the release "
                         f"({release}) and architecture ({arch})")

    best: tuple[tuple[int, ...], str, str] | None = None
    seen_other = set()
    for serial, version in (product.get("versions") or {}).items():
        if not _SERIAL.match(serial) or not isinstance(version, dict):
            continue
        for item in (version.get("items") or {}).values():
            if not isinstance(item, dict):
                continue
            if item.get("crsn", item.get("region")) != region:
                continue
            image_id = str(item.get("id", ""))
            ssd = str(item.get("root_store", "")).startswith("ssd")
            if item.get("virt") != "hvm" or not ssd:
                seen_other.add(f"{item.get('virt')}/{item.get('root_store')}")
                continue
            if not _EXACT_AMI_ID.match(image_id):
                continue
            candidate = (_serial_key(serial), serial, image_id)
            if best is None or candidate[0] > best[0]:
                best = candidate

    if best is None:
        found = f" (only {', '.join(sorted(seen_other))} images)" if seen_other else ""
        raise ImageError(
            f"aws.json has no HVM SSD image of Ubuntu {release} {arch} in "
            f"{region}{found}; pin `ami` for this region in regions.toml or "
            f"resolve it through SSM with AWS credentials"
        )
    return best[2], best[1]


# ----- locator releasesTable -------------------------------------------------


def parse_releases_table(text: str) -> list[list[str]]:
    """Parse the EC2 locator's releasesTable body into rows.

    The body is JSON `{"aaData": [[...], ...]}` except that it has been
    published with a trailing comma after the last row, which strict JSON
    rejects, so a comma right before a closing bracket is dropped first.
    """
    cleaned = re.sub(r",\s*([\]}])", r"\1", text.strip())
    try:
        data = json.loads(cleaned)
    except json.JSONDecodeError as error:
        raise ImageError(f"releasesTable is not valid JSON even without trailing "
                         f"commas: {error.msg} at line {error.lineno}") from None
    except RecursionError:
        raise ImageError("releasesTable nests arrays or objects too deeply to "
                         "parse; download it again") from None
    rows = data.get("aaData") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ImageError("releasesTable has no 'aaData' list")
    return [[str(cell) for cell in row] for row in rows if isinstance(row, list)]


def pick_from_releases_table(rows: list[list[str]], region: str, release: str,
                             arch: str) -> tuple[str, str]:
    """Return (ami id, serial) of the newest matching releasesTable row.

    A row is [cloud, region, codename, version, arch, instance type, serial,
    id], where the id is wrapped in an HTML link to the EC2 console and the
    instance type is "hvm-ssd", "hvm-ssd-gp3", "hvm-instance" or "pv-...".
    """
    best: tuple[tuple[int, ...], str, str] | None = None
    seen_other = set()
    for row in rows:
        if len(row) < 8:
            continue
        cloud, row_region, _codename, version, row_arch, kind, serial, link = row[:8]
        if cloud != "Amazon AWS" or row_region != region:
            continue
        if version.split(" ", 1)[0] != release or row_arch != arch:
            continue
        if not kind.startswith("hvm-ssd") and not kind.startswith("hvm:ebs-ssd"):
            seen_other.add(kind)
            continue
        match = _AMI_ID.search(re.sub(r"<[^>]*>", " ", link))
        if not match or not _SERIAL.match(serial):
            continue
        candidate = (_serial_key(serial), serial, match.group(0))
        if best is None or candidate[0] > best[0]:
            best = candidate

    if best is None:
        found = f" (only {', '.join(sorted(seen_other))} rows)" if seen_other else ""
        raise ImageError(
            f"releasesTable has no HVM SSD row for Ubuntu {release} {arch} in "
            f"{region}{found}; pin `ami` for this region in regions.toml or "
            f"resolve it through SSM with AWS credentials"
        )
    return best[2], best[1]


# ----- cache -----------------------------------------------------------------


def cache_date(path: Path) -> str:
    """Return the date a cached catalogue was saved, from its .date sidecar."""
    sidecar = path.with_name(path.name + ".date")
    if sidecar.exists():
        return sidecar.read_text(encoding="utf-8").strip()
    modified = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    return modified.strftime("%Y-%m-%dT%H:%M:%SZ")


def store_catalogue(content: bytes, name: str, cache_dir: Path | None = None,
                    date: datetime | None = None) -> Path:
    """Write a catalogue into the cache with its date; return the path."""
    cache_dir = cache_dir or default_cache_dir()
    if name not in (SIMPLESTREAMS_NAME, RELEASES_TABLE_NAME):
        raise ImageError(f"unknown catalogue name {name!r}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / name
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    temporary.replace(path)
    stamp = (date or datetime.now(tz=UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.with_name(name + ".date").write_text(stamp + "\n", encoding="utf-8")
    return path


def _read_catalogue(path: Path, fix: str) -> str:
    """Return a catalogue file's text; raise ImageError naming `fix` if unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ImageError(f"{path}: not UTF-8 text ({error.reason}); {fix}") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot read: {error.strerror}; {fix}") from None


def _parse_json(text: str, path: Path, fix: str) -> Any:
    """Parse a catalogue's JSON; raise ImageError naming `fix` if it is invalid."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ImageError(f"{path}: not JSON ({error.msg}); {fix}") from None
    except RecursionError:
        raise ImageError(f"{path}: JSON nested too deeply to parse; {fix}") from None


def import_catalogue(source: Path, cache_dir: Path | None = None) -> Path:
    """Copy a saved aws.json or releasesTable into the cache; return the path."""
    cache_dir = cache_dir or default_cache_dir()
    expected = "expected aws.json or a releasesTable body"
    text = _read_catalogue(source, expected)
    if '"aaData"' in text:
        name = RELEASES_TABLE_NAME
        parse_releases_table(text)
    else:
        name = SIMPLESTREAMS_NAME
        data = _parse_json(text, source, expected)
        if not isinstance(data, dict) or "products" not in data:
            raise ImageError(f"{source}: no 'products' table; expected the "
                             f"simplestreams file com.ubuntu.cloud:released:aws.json")
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / name
    shutil.copyfile(source, target)
    modified = datetime.fromtimestamp(source.stat().st_mtime, tz=UTC)
    target.with_name(name + ".date").write_text(
        modified.strftime("%Y-%m-%dT%H:%M:%SZ") + "\n", encoding="utf-8")
    return target


def refresh_catalogue(cache_dir: Path | None = None, url: str = SIMPLESTREAMS_URL
                      ) -> Path:
    """Download the simplestreams aws.json into the cache; return the path."""
    cache_dir = cache_dir or default_cache_dir()
    import httpx

    try:
        response = httpx.get(url, timeout=FETCH_TIMEOUT, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise ImageError(f"cannot download {url}: {error}; copy a saved file in "
                         f"with `invoke ami --import-file FILE` instead") from None
    store_catalogue(response.content, SIMPLESTREAMS_NAME, cache_dir)
    log.info("event=catalogue_refreshed url=%s bytes=%d", url, len(response.content))
    return cache_dir / SIMPLESTREAMS_NAME


def from_cache(region: str, release: str, arch: str, cache_dir: Path | None = None
               ) -> Image:
    """Resolve an AMI from the cached catalogue; raise ImageError if none fits."""
    cache_dir = cache_dir or default_cache_dir()
    streams = cache_dir / SIMPLESTREAMS_NAME
    table = cache_dir / RELEASES_TABLE_NAME
    if streams.exists():
        fix = "run `invoke ami --refresh` to download it again"
        data = _parse_json(_read_catalogue(streams, fix), streams, fix)
        if not isinstance(data, dict):
            raise ImageError(f"{streams}: not a JSON object; {fix}")
        image_id, serial = pick_from_simplestreams(data, region, release, arch)
        source, path = "catalogue aws.json", streams
    elif table.exists():
        fix = "import a fresh copy with `invoke ami --import-file FILE`"
        rows = parse_releases_table(_read_catalogue(table, fix))
        image_id, serial = pick_from_releases_table(rows, region, release, arch)
        source, path = "catalogue releasesTable", table
    else:
        raise ImageError(f"no cached catalogue in {cache_dir}")
    return Image(image_id, serial, source, cache_date(path), region, release, arch)


# ----- SSM -------------------------------------------------------------------


def has_aws_credentials() -> bool:
    """Return True when boto3 finds credentials without asking the network.

    botocore's chain ends with the EC2 instance metadata service, an HTTP
    call that waits for a timeout off EC2, so that provider is left out of
    this check.
    NOTE: with only an EC2 instance role this returns False, and the image
    comes from the catalogue cache instead of SSM.
    """
    import botocore.session

    session = botocore.session.get_session()
    resolver = session.get_component("credential_provider")
    resolver.remove("iam-role")
    return resolver.load_credentials() is not None


def from_ssm(region: str, release: str, arch: str, session: Any = None) -> Image:
    """Resolve an AMI through Canonical's SSM parameter and check its owner."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = session or boto3.session.Session()
    name = ssm_parameter(release, arch)
    try:
        ssm = session.client("ssm", region_name=region)
        parameter = ssm.get_parameter(Name=name)["Parameter"]
        image_id = parameter["Value"]
        ec2 = session.client("ec2", region_name=region)
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise ImageError(f"SSM parameter {name} in {region}: {code}; check the "
                         f"release and architecture, and the AWS credentials"
                         ) from None
    except BotoCoreError as error:
        raise ImageError(f"AWS call for {name} in {region} failed: {error}") from None

    if not images:
        raise ImageError(f"{image_id} from {name} is not visible in {region}")
    image = images[0]
    check_image(image, region, release, arch)

    created = image.get("CreationDate", "")
    if isinstance(parameter.get("LastModifiedDate"), datetime) and not created:
        created = parameter["LastModifiedDate"].isoformat()
    serial = str(image.get("Name", "")).rsplit("-", 1)[-1]
    return Image(image_id, serial, "ssm", str(created), region, release, arch)


def check_image(image: dict[str, Any], region: str, release: str, arch: str) -> None:
    """Raise ImageError unless `describe_images` shows Canonical's HVM image."""
    image_id = image.get("ImageId", "?")
    owner = image.get("OwnerId")
    if owner != CANONICAL_OWNER:
        raise ImageError(
            f"{image_id} in {region} is owned by {owner}, not Canonical "
            f"({CANONICAL_OWNER}); refusing to boot it, pin a Canonical AMI"
        )
    expected = _EC2_ARCH[arch]
    if image.get("Architecture") != expected:
        raise ImageError(
            f"{image_id} in {region} is {image.get('Architecture')}, but the "
            f"instance type needs {expected}; change `size` or the image"
        )
    if image.get("VirtualizationType", "hvm") != "hvm":
        raise ImageError(f"{image_id} in {region} is not an HVM image")


def check_pinned(region: Region, session: Any = None) -> None:
    """Raise ImageError unless a pinned AMI exists in the region with its arch.

    The owner is not checked here: a pinned id may be the operator's own image.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = session or boto3.session.Session()
    try:
        ec2 = session.client("ec2", region_name=region.name)
        found = ec2.describe_images(ImageIds=[region.ami])["Images"]
    except (ClientError, BotoCoreError) as error:
        raise ImageError(f"pinned ami {region.ami} in [regions.{region.name}]: "
                         f"{error}") from None
    if not found:
        raise ImageError(f"pinned ami {region.ami} does not exist in {region.name}")
    expected = _EC2_ARCH[region.arch]
    if found[0].get("Architecture") != expected:
        raise ImageError(
            f"pinned ami {region.ami} in [regions.{region.name}] is "
            f"{found[0].get('Architecture')}, but instance type {region.size} "
            f"needs {expected}; pin an {region.arch} image or change `size`"
        )


# ----- entry point -----------------------------------------------------------


def resolve_ami(region: Region, *, cache_dir: Path | None = None,
                use_ssm: bool | None = None, session: Any = None) -> Image:
    """Return the AMI of an AWS region: pinned, else SSM, else the cache.

    `use_ssm` None means: ask SSM when AWS credentials are configured.
    """
    cache_dir = cache_dir or default_cache_dir()
    if region.provider != "aws":
        raise ImageError(f"region {region.name} is {region.provider}, not aws")
    release = region.ubuntu
    if use_ssm is None:
        use_ssm = session is not None or has_aws_credentials()

    if region.ami:
        if use_ssm:
            check_pinned(region, session)
        return Image(region.ami, "", "pinned in regions.toml", "", region.name,
                     release, region.arch)

    if use_ssm:
        return from_ssm(region.name, release, region.arch, session)

    try:
        return from_cache(region.name, release, region.arch, cache_dir)
    except ImageError as error:
        if "no cached catalogue" not in str(error):
            raise
    raise ImageError(
        f"no image for region {region.name}: no AWS credentials for SSM and no "
        f"cached catalogue in {cache_dir}. Fix one of: run `invoke ami --refresh` "
        f"once with network access, copy a saved aws.json in with `invoke ami "
        f"--import-file FILE`, configure AWS credentials, or pin "
        f"ami = \"ami-...\" in [regions.{region.name}]"
    )


def scaleway_image(region: Region, client: Any) -> Image:
    """Resolve the Ubuntu image of one Scaleway zone through the Marketplace API.

    `client` is a fleet.scaleway.InstanceClient. Local image ids differ per
    zone, so the id returned here is only valid in `region.zone`.
    """
    label = f"ubuntu_{UBUNTU_RELEASES[region.ubuntu]}"
    arch = _EC2_ARCH[region.arch]
    images = client.list_local_images(region.zone, label)
    matches = [
        image for image in images
        if image.get("zone") == region.zone and image.get("arch") == arch
        and (not image.get("compatible_commercial_types")
             or region.size in image["compatible_commercial_types"])
    ]
    if not matches:
        raise ImageError(
            f"no {label} {arch} image for {region.size} in zone {region.zone}; "
            f"check `size` and `ubuntu` of [regions.{region.name}]"
        )
    # Prefer block-storage images: new instance types boot from SBS volumes.
    matches.sort(key=lambda image: image.get("type") != "instance_sbs")
    chosen = matches[0]
    today = datetime.now(tz=UTC).strftime("%Y-%m-%d")
    return Image(chosen["id"], chosen.get("label", label), "scaleway marketplace",
                 today, region.zone, region.ubuntu, region.arch)
