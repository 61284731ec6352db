"""Load and validate the region settings file (regions.toml).

`load()` reads the file, merges `[defaults]` into every `[regions.<name>]`
table and checks every value before any task runs. All problems found are
reported together in one `ConfigError`, one line each, naming the file, the
region, the key, the bad value and the fix.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = ("aws", "scaleway", "virtualbox", "docker")
CLOUD_PROVIDERS = ("aws", "scaleway")

# Ubuntu LTS releases the image resolver supports, with their codenames.
UBUNTU_RELEASES = {"20.04": "focal", "22.04": "jammy", "24.04": "noble"}

# Provisioning steps a region may list in `roles`, in the order provision/
# runs them. A role is also accepted when provision/<role>.sh is a step script
# (see provision_steps), so a new step needs no change here.
KNOWN_ROLES = ("base", "nginx", "dokku", "couchdb", "cleanup", "reboot")

# Scaleway Instance zones (Scaleway documentation, "Availability Zones").
SCALEWAY_ZONES = (
    "fr-par-1", "fr-par-2", "fr-par-3",
    "nl-ams-1", "nl-ams-2", "nl-ams-3",
    "pl-waw-1", "pl-waw-2", "pl-waw-3",
)

# Instance type prefixes whose CPUs are arm64. AWS Graviton families carry a
# "g" after the generation digit (t4g, m7gd, c6gn), plus the first-generation
# a1. Scaleway's Ampere types are AMP2 and COPARM1.
_AWS_ARM_FAMILY = re.compile(r"a1|[a-z]+[0-9]+g[a-z]*")
_SCALEWAY_ARM_PREFIXES = ("AMP2-", "COPARM1-")

# Patterns are used with fullmatch(): "$" would also accept a trailing newline.
_AZ_PATTERN = re.compile(r"([a-z]{2}(?:-gov)?-[a-z]+-[0-9]+)([a-z])")
_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
_HOSTNAME_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_AMI_PATTERN = re.compile(r"ami-([0-9a-f]{8}|[0-9a-f]{17})")
_AWS_SIZE_PATTERN = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+")
_SCALEWAY_SIZE_PATTERN = re.compile(r"[A-Z0-9]+(-[A-Z0-9]+)+")
_VERSION_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
_PIN_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*(\.\*)?")
# A Docker image reference, checked loosely: optional registry host[:port]/,
# lower-case path components, optional :tag and @sha256 digest.
_IMAGE_PATTERN = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
# EC2 key pair names: up to 255 ASCII characters (EC2 API reference,
# CreateKeyPair, KeyName).
_KEY_PAIR_PATTERN = re.compile(r"[\x20-\x7e]{1,255}")

DISK_WARN_GB = 16
# Memory of a VirtualBox or lab box: below 512 MB apt and the app do not fit.
MIN_MEMORY_MB = 512
MAX_MEMORY_MB = 262144
DOCKER_IMAGE = "vatfleet-box:bookworm"
VIRTUALBOX_BOXES = {
    "20.04": "ubuntu/focal64",
    "22.04": "ubuntu/jammy64",
    "24.04": "bento/ubuntu-24.04",
}


@dataclass(frozen=True)
class KeySpec:
    """One allowed key: its TOML type, default and the providers that use it."""

    type: type | tuple[type, ...]
    default: Any = None
    providers: tuple[str, ...] = PROVIDERS
    doc: str = ""


# Every key a region table (or [defaults]) may hold. `provider` is per region
# only; a key used by another provider is rejected so a typo cannot hide.
REGION_KEYS: dict[str, KeySpec] = {
    "provider": KeySpec(str, None, PROVIDERS, "aws, scaleway, virtualbox or docker"),
    "ubuntu": KeySpec(str, "24.04", ("aws", "scaleway", "virtualbox")),
    "size": KeySpec(str, "", ("aws", "scaleway")),
    "arch": KeySpec(str, "", PROVIDERS),
    "disk_gb": KeySpec(int, 20),
    "disk_alert_percent": KeySpec(int, 80),
    "roles": KeySpec(list, ["base", "nginx", "dokku", "cleanup", "reboot"]),
    "hostname": KeySpec(str, ""),
    "nginx_pin": KeySpec(str, ""),
    "nginx_floor": KeySpec(str, "1.11.9"),
    "key_pair": KeySpec(str, "", ("aws",)),
    "private_key": KeySpec(str, "", ("aws", "scaleway")),
    "ami": KeySpec(str, "", ("aws",)),
    "latency_region": KeySpec(str, "", ("scaleway", "virtualbox", "docker")),
    "zone": KeySpec(str, "", ("scaleway",)),
    "memory_mb": KeySpec(int, 2048, ("virtualbox", "docker")),
    "cpus": KeySpec(int, 2, ("virtualbox", "docker")),
    "private_ip": KeySpec(str, "", ("virtualbox",)),
    "box": KeySpec(str, "", ("virtualbox",)),
    "image": KeySpec(str, DOCKER_IMAGE, ("docker",)),
    "ssh_port": KeySpec(int, 0, ("docker",)),
    "http_port": KeySpec(int, 0, ("docker",)),
    "https_port": KeySpec(int, 0, ("docker",)),
}
PROJECT_KEYS: dict[str, KeySpec] = {
    "name": KeySpec(str),
    "domain": KeySpec(str),
    "primary": KeySpec(str),
    "operator_keys": KeySpec(str, "keys/operators.pub"),
}
TOP_LEVEL_KEYS = ("project", "defaults", "regions")


@dataclass(frozen=True)
class Project:
    """The [project] table: names shared by every region."""

    name: str
    domain: str
    primary: str
    operator_keys: Path


@dataclass
class Region:
    """One box: a [regions.<name>] table merged over [defaults]."""

    name: str
    provider: str
    ubuntu: str
    size: str
    disk_gb: int
    disk_alert_percent: int
    roles: list[str]
    hostname: str
    nginx_pin: str
    nginx_floor: str
    is_primary: bool
    box_dir: Path
    arch: str = "amd64"
    key_pair: str = ""
    private_key: str = ""
    ami: str = ""
    latency_region: str = ""
    zone: str = ""
    memory_mb: int = 2048
    cpus: int = 2
    private_ip: str = ""
    box: str = ""
    image: str = DOCKER_IMAGE
    ssh_port: int = 0
    http_port: int = 0
    https_port: int = 0

    @property
    def is_cloud(self) -> bool:
        return self.provider in CLOUD_PROVIDERS

    @property
    def private_key_path(self) -> Path | None:
        """Private key as a local path, `~` expanded; None when none is set."""
        if not self.private_key:
            return None
        return Path(self.private_key).expanduser()


@dataclass
class Fleet:
    """Every region of one settings file, plus its [project] table."""

    path: Path
    project: Project
    regions: dict[str, Region]
    warnings: list[str] = field(default_factory=list)

    def select(self, spec: str) -> list[Region]:
        """Return the regions named by "NAME", "a,b" or "all", in file order."""
        spec = (spec or "").strip()
        if spec == "all":
            return list(self.regions.values())

        names = [part.strip() for part in spec.split(",") if part.strip()]
        if not names:
            raise ConfigError(
                f"{self.path}: no region given; pass --region NAME, a comma list "
                f"or 'all' (valid: {', '.join(self.regions)})"
            )
        if "all" in names and "all" not in self.regions:
            raise ConfigError(
                f"{self.path}: --region {_clip(spec)!r} combines 'all' with other "
                f"names; pass --region all alone, or list the regions"
            )
        unknown = list(dict.fromkeys(n for n in names if n not in self.regions))
        if unknown:
            noun = "region" if len(unknown) == 1 else "regions"
            listed = ", ".join(map(repr, map(_clip, unknown)))
            hints = [self._hint(name, several=len(unknown) > 1) for name in unknown]
            hint = " ".join(h for h in hints if h)
            # "; did you mean" continues the sentence, other hints start their own.
            separator = "; " if hint[:1].islower() else ". "
            valid = f"{separator}{hint} Valid regions:" if hint else "; valid regions:"
            raise ConfigError(
                f"{self.path}: unknown {noun} {listed}{valid} "
                f"{', '.join(self.regions)}, or 'all'"
            )
        return [self.regions[name] for name in dict.fromkeys(names)]

    def _hint(self, name: str, several: bool) -> str:
        """Return a hint sentence for an unknown region name, or "" for none."""
        zone = _AZ_PATTERN.fullmatch(name)
        if zone and zone.group(1) in self.regions:
            return (f"{_clip(name)!r} is an availability zone, not a region, so "
                    f"use {zone.group(1)!r}.")
        if zone and zone.group(1) in aws_regions():
            return (f"{_clip(name)!r} is an availability zone, not a region, and "
                    f"this file has no region {zone.group(1)!r}.")
        close = difflib.get_close_matches(name.lower(), self.regions, n=1)
        if not close:
            return ""
        if several:
            return f"For {_clip(name)!r}, did you mean {close[0]!r}?"
        return f"did you mean {close[0]!r}?"


def default_config_path() -> Path:
    """Return $FLEET_CONFIG if set, else regions.toml in the repository root."""
    env = os.environ.get("FLEET_CONFIG")
    return Path(env) if env else REPO_ROOT / "regions.toml"


def aws_regions() -> frozenset[str]:
    """Return every AWS region botocore's bundled endpoint data lists."""
    import boto3

    session = boto3.session.Session()
    names: set[str] = set()
    for partition in ("aws", "aws-us-gov", "aws-cn"):
        names.update(session.get_available_regions("ec2", partition_name=partition))
    return frozenset(names)


def instance_arch(provider: str, size: str) -> str:
    """Return "arm64" or "amd64" for an instance type of the given provider."""
    if provider == "aws":
        family = size.split(".", 1)[0]
        return "arm64" if _AWS_ARM_FAMILY.fullmatch(family) else "amd64"
    if provider == "scaleway":
        return "arm64" if size.startswith(_SCALEWAY_ARM_PREFIXES) else "amd64"
    return "amd64"


def provision_steps(directory: Path | None = None) -> list[str]:
    """Return the step names in provision/: scripts that start with a shebang.

    A file sourced by the steps, such as lib.sh, has no shebang and is no role.
    """
    directory = directory or REPO_ROOT / "provision"
    steps = []
    for path in sorted(directory.glob("*.sh")):
        with path.open("rb") as handle:
            if handle.read(2) == b"#!":
                steps.append(path.stem)
    return steps


def load(path: Path | str | None = None) -> Fleet:
    """Read and validate a regions file; raise ConfigError listing every problem."""
    path = Path(path) if path else default_config_path()
    data = _read_toml(path)
    checker = _Checker(path)
    fleet = checker.build(data)
    for warning in fleet.warnings:
        log.warning("event=config_warning %s", warning)
    return fleet


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: file not found; pass --config PATH or set FLEET_CONFIG "
            f"to a regions file (the repository ships regions.toml)"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None

    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(_explain_toml_error(path, str(error))) from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(
            f"{path}: invalid TOML: arrays or inline tables nested too deeply "
            f"to parse; region settings need at most two levels"
        ) from None


def _explain_toml_error(path: Path, message: str) -> str:
    # tomllib rejects a table declared twice with "Cannot declare ('regions',
    # 'x') twice (at line N, column M)" (Python 3.11 wording).
    twice = re.match(r"Cannot declare \((.*)\) twice(.*)", message)
    if twice:
        parts = [part.strip(" '\"") for part in twice.group(1).split(",") if part]
        table = ".".join(parts)
        where = twice.group(2).strip()
        if len(parts) == 2 and parts[0] == "regions":
            return (
                f"{path}: region {parts[1]!r} is defined twice {where}; region "
                f"names must be unique: rename or delete one [{table}] table"
            )
        return f"{path}: table or key [{table}] is defined twice {where}; keep one"
    return f"{path}: invalid TOML: {message}; fix the syntax at that line"


class _Checker:
    """Collect every problem in one settings file, then raise them together."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self._aws_regions: frozenset[str] | None = None

    def fail(self, where: str, message: str) -> None:
        self.errors.append(f"{self.path}: {where}: {message}")

    @property
    def known_aws_regions(self) -> frozenset[str]:
        if self._aws_regions is None:
            self._aws_regions = aws_regions()
        return self._aws_regions

    def build(self, data: dict[str, Any]) -> Fleet:
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                self.fail(
                    f"[{key}]",
                    f"unknown table or key {key!r}; valid top-level tables: "
                    f"{', '.join(TOP_LEVEL_KEYS)}",
                )

        project = self._project(data.get("project"))
        defaults = self._table(data.get("defaults", {}), "[defaults]")
        valid_defaults = self._check_keys(defaults, "[defaults]", provider=None)
        defaults = {key: defaults[key] for key in valid_defaults}
        if "provider" in defaults:
            self.fail("[defaults]", "key 'provider' must be set per region, not here")
        # Checked once here, so a bad role is not reported again for each region
        # that inherits it. Regions that set their own roles are checked apart.
        if "roles" in defaults and not self._check_roles("[defaults]",
                                                         defaults["roles"]):
            del defaults["roles"]

        tables = self._table(data.get("regions"), "[regions]")
        if not tables:
            self.fail("[regions]", "no region defined; add a [regions.<name>] table")

        regions: dict[str, Region] = {}
        for name, table in tables.items():
            region = self._region(name, table, defaults, project)
            if region is not None:
                regions[name] = region

        self._check_fleet(project, list(tables), regions)
        if self.errors:
            count = len(self.errors)
            head = f"{count} problem{'s' if count > 1 else ''} in {self.path}:\n"
            raise ConfigError(head + "\n".join(f"  - {e}" for e in self.errors))

        assert project is not None
        return Fleet(self.path.resolve(), project, regions, self.warnings)

    # ----- tables -----------------------------------------------------------

    def _table(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, f"expected a table, got {_type_name(value)} {value!r}")
            return {}
        return value

    def _project(self, value: Any) -> Project | None:
        table = self._table(value, "[project]")
        if value is None:
            self.fail("[project]", "missing table; add [project] with name, "
                      "domain and primary")
            return None

        ok = True
        for key in table:
            if key not in PROJECT_KEYS:
                self._unknown_key("[project]", key, PROJECT_KEYS)
                ok = False
        values: dict[str, Any] = {}
        for key, spec in PROJECT_KEYS.items():
            if key not in table:
                if spec.default is None:
                    self.fail("[project]", f"missing key {key!r}")
                    ok = False
                values[key] = spec.default
                continue
            if not self._check_type("[project]", key, table[key], spec):
                ok = False
            values[key] = table[key]
        if not ok:
            return None

        keys_path = Path(values["operator_keys"]).expanduser()
        if not keys_path.is_absolute():
            keys_path = self.path.resolve().parent / keys_path
        return Project(values["name"], values["domain"], values["primary"], keys_path)

    def _check_keys(self, table: dict[str, Any], where: str, provider: str | None
                    ) -> set[str]:
        """Report unknown, misplaced and mistyped keys; return the valid ones."""
        valid = set()
        for key, value in table.items():
            spec = REGION_KEYS.get(key)
            if spec is None:
                self._unknown_key(where, key, REGION_KEYS)
                continue
            if provider is not None and provider not in spec.providers:
                used_by = ", ".join(spec.providers)
                self.fail(
                    where,
                    f"key {key!r} is not used by {provider} regions (only by "
                    f"{used_by}); remove it",
                )
                continue
            if self._check_type(where, key, value, spec):
                valid.add(key)
        return valid

    def _unknown_key(self, where: str, key: str, valid: dict[str, Any]) -> None:
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "remove it"
        self.fail(
            where,
            f"unknown key {key!r}; {hint} (valid keys: {', '.join(valid)})",
        )

    def _check_type(self, where: str, key: str, value: Any, spec: KeySpec) -> bool:
        # bool is a subclass of int; `disk_gb = true` must not pass as 1.
        wrong = isinstance(value, bool) and spec.type is not bool
        if wrong or not isinstance(value, spec.type):
            expected = spec.type.__name__ if isinstance(spec.type, type) else "value"
            hint = ""
            if spec.type is str and isinstance(value, (int, float)):
                hint = f'; quote it: {key} = "{value}"'
            elif spec.type is int and isinstance(value, str) and value.isdigit():
                hint = f"; write {key} = {value} (no quotes)"
            self.fail(
                where,
                f"key {key!r} must be {_article(_TOML_NAMES.get(expected, expected))}, "
                f"got the {_type_name(value)} {value!r}{hint}",
            )
            return False
        if spec.type is list and not all(isinstance(i, str) for i in value):
            self.fail(where, f"key {key!r} must be a list of strings, got {value!r}")
            return False
        return True

    # ----- one region -------------------------------------------------------

    def _region(self, name: str, table: Any, defaults: dict[str, Any],
                project: Project | None) -> Region | None:
        where = f"[regions.{name}]"
        table = self._table(table, where)
        errors_before = len(self.errors)

        self._check_name(name, where)
        provider = table.get("provider")
        if provider is None:
            self.fail(where,
                      f"missing key 'provider'; set one of {', '.join(PROVIDERS)}")
            return None
        if provider not in PROVIDERS:
            self.fail(
                where,
                f"key 'provider' has unknown value {provider!r}; use one of "
                f"{', '.join(PROVIDERS)}",
            )
            return None

        # Defaults apply only where the provider uses the key.
        merged: dict[str, Any] = {}
        for key, spec in REGION_KEYS.items():
            if provider in spec.providers and spec.default is not None:
                merged[key] = spec.default
        for key, value in defaults.items():
            spec = REGION_KEYS.get(key)
            if spec is not None and provider in spec.providers:
                merged[key] = value
        # Keys that failed their check are left out, so the values that did
        # pass are still checked and every problem is reported in one go.
        valid = self._check_keys(table, where, provider)
        merged.update({key: table[key] for key in valid})

        self._check_values(name, where, provider, merged, set(table),
                           set(table) - valid)
        if len(self.errors) > errors_before:
            return None

        return self._make_region(name, provider, merged, project)

    def _check_name(self, name: str, where: str) -> None:
        if not _NAME_PATTERN.fullmatch(name):
            self.fail(
                where,
                f"region name {name!r} is invalid; use lower-case letters, digits "
                f"and '-' (it names a Vagrant machine and a directory)",
            )

    def _check_values(self, name: str, where: str, provider: str,
                      values: dict[str, Any], own_keys: set[str],
                      rejected: set[str]) -> None:
        """Check one region's merged values.

        `own_keys` are the keys the region's table sets. `rejected` are those of
        them that failed their type check, which was reported already.
        """
        if provider == "aws":
            self._check_aws_region(where, "region name", name)
        if provider in ("aws", "scaleway", "virtualbox"):
            self._check_ubuntu(where, values["ubuntu"])
        if provider in CLOUD_PROVIDERS:
            self._check_size(where, provider, values.get("size", ""), values)
        if provider == "scaleway":
            self._check_zone(where, name, values.get("zone") or name)
        if values.get("latency_region"):
            self._check_aws_region(where, "key 'latency_region'",
                                   values["latency_region"])
        elif provider == "scaleway":
            self.fail(where, "missing key 'latency_region'; set the AWS region "
                      "nearest to this zone, for latency-based DNS")

        self._check_required(where, provider, values, rejected)
        self._check_disk(where, values)
        # Roles inherited from [defaults] were checked there, once for all.
        if "roles" in own_keys:
            self._check_roles(where, values["roles"])
        self._check_hostname(where, values.get("hostname", ""))
        self._check_versions(where, values)
        self._check_provider_values(where, provider, values)

    def _check_aws_region(self, where: str, what: str, value: str) -> None:
        if value in self.known_aws_regions:
            return
        zone = _AZ_PATTERN.fullmatch(value)
        if zone and zone.group(1) in self.known_aws_regions:
            self.fail(
                where,
                f"{what} {value!r} is an availability zone, not a region; use the "
                f"region {zone.group(1)!r} (Vagrant and EC2 pick the zone)",
            )
            return
        close = difflib.get_close_matches(value, self.known_aws_regions, n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else (
            "use an AWS region such as 'eu-west-1'")
        self.fail(where, f"{what} {value!r} is not an AWS region; {hint}")

    def _check_ubuntu(self, where: str, ubuntu: str) -> None:
        if ubuntu not in UBUNTU_RELEASES:
            self.fail(
                where,
                f"key 'ubuntu' has unsupported release {ubuntu!r}; use one of "
                f"{', '.join(map(repr, UBUNTU_RELEASES))}",
            )

    def _check_size(self, where: str, provider: str, size: str,
                    values: dict[str, Any]) -> None:
        if not size:
            example = "t3.small" if provider == "aws" else "DEV1-S"
            self.fail(where, f"missing key 'size'; set an instance type such as "
                      f"{example!r}")
            return
        pattern = _AWS_SIZE_PATTERN if provider == "aws" else _SCALEWAY_SIZE_PATTERN
        if not pattern.fullmatch(size):
            example = "t3.small" if provider == "aws" else "DEV1-S"
            self.fail(where, f"key 'size' {size!r} is not {_article(provider)} "
                      f"instance type; use a name such as {example!r}")
            return

        size_arch = instance_arch(provider, size)
        arch = values.get("arch") or ""
        if arch and arch != size_arch:
            self.fail(
                where,
                f"key 'arch' is {arch!r} but instance type {size!r} runs "
                f"{size_arch}; pick {_article(arch)} instance type or set "
                f"arch = {size_arch!r}",
            )

    def _check_zone(self, where: str, name: str, zone: str) -> None:
        if zone in SCALEWAY_ZONES:
            return
        hint = f"valid zones: {', '.join(SCALEWAY_ZONES)}"
        key = "key 'zone'" if zone != name else "region name (the Scaleway zone)"
        self.fail(where, f"{key} {zone!r} is not a Scaleway zone; {hint}")

    def _check_required(self, where: str, provider: str, values: dict[str, Any],
                        rejected: set[str]) -> None:
        """Report missing required keys, except those rejected for their type."""
        required = {
            "aws": ("key_pair", "private_key", "hostname"),
            "scaleway": ("private_key", "hostname"),
            "virtualbox": ("private_ip", "hostname"),
            "docker": ("ssh_port", "http_port", "https_port", "hostname"),
        }[provider]
        for key in required:
            if not values.get(key) and key not in rejected:
                self.fail(where, f"missing key {key!r}, needed by {provider} regions")

    def _check_disk(self, where: str, values: dict[str, Any]) -> None:
        disk = values["disk_gb"]
        if disk < 8 or disk > 16384:
            self.fail(where, f"key 'disk_gb' {disk} is out of range; use 8 to 16384, "
                      f"20 or more in practice (Ubuntu cloud images need 8 GB "
                      f"to boot)")
        elif disk < DISK_WARN_GB:
            self.warnings.append(
                f"{self.path}: {where}: disk_gb = {disk} is below {DISK_WARN_GB} GB; "
                f"Docker images and logs fill a small disk within months, use 20"
            )

        percent = values["disk_alert_percent"]
        if not 1 <= percent <= 99:
            self.fail(where, f"key 'disk_alert_percent' {percent} is out of range; "
                      f"use 1 to 99")

    def _check_roles(self, where: str, roles: list[str]) -> bool:
        """Report unknown and repeated roles; return True if there are none."""
        known = sorted(set(KNOWN_ROLES) | set(provision_steps()))
        ok = True
        for role in roles:
            if role not in known:
                close = difflib.get_close_matches(role, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(
                    where,
                    f"key 'roles' has unknown role {role!r}; {hint}valid roles: "
                    f"{', '.join(known)}",
                )
                ok = False
        duplicates = sorted({r for r in roles if roles.count(r) > 1})
        if duplicates:
            self.fail(where, f"key 'roles' lists {', '.join(duplicates)} twice")
            ok = False
        return ok

    def _check_hostname(self, where: str, hostname: str) -> None:
        if not hostname:
            return
        labels = hostname.rstrip(".").split(".")
        valid = len(hostname) <= 253 and len(labels) >= 2 and all(
            _HOSTNAME_LABEL.fullmatch(label) for label in labels)
        if not valid:
            self.fail(where, f"key 'hostname' {hostname!r} is not a valid DNS name; "
                      f"use lower-case labels such as 'eu-west-1.api.example.com'")

    def _check_versions(self, where: str, values: dict[str, Any]) -> None:
        floor = values["nginx_floor"]
        if not _VERSION_PATTERN.fullmatch(floor):
            self.fail(where, f"key 'nginx_floor' {floor!r} is not a version; use "
                      f"digits and dots such as '1.11.9'")
        pin = values["nginx_pin"]
        if pin and not _PIN_PATTERN.fullmatch(pin):
            self.fail(where, f"key 'nginx_pin' {pin!r} is not an apt version pin; "
                      f"use a form such as '1.24.*', or \"\" for the distro's")

    def _check_provider_values(self, where: str, provider: str,
                               values: dict[str, Any]) -> None:
        arch = values.get("arch") or ""
        if arch and arch not in ("amd64", "arm64"):
            self.fail(where, f"key 'arch' {arch!r} is invalid; use 'amd64' or 'arm64'")
        if arch == "arm64" and provider in ("virtualbox", "docker"):
            self.fail(where, f"key 'arch' 'arm64' is not supported for {provider} "
                      f"regions; remove it")

        image = values.get("image") or ""
        if provider == "docker" and not _IMAGE_PATTERN.fullmatch(image):
            self.fail(where, f"key 'image' {image!r} is not a Docker image reference; "
                      f"use a name such as {DOCKER_IMAGE!r}")

        key_pair = values.get("key_pair") or ""
        if key_pair and not _KEY_PAIR_PATTERN.fullmatch(key_pair):
            self.fail(where, f"key 'key_pair' {key_pair!r} is not an EC2 key pair "
                      f"name; use 1 to 255 printable ASCII characters")

        ami = values.get("ami") or ""
        if ami and not _AMI_PATTERN.fullmatch(ami):
            self.fail(where, f"key 'ami' {ami!r} is not an AMI id; use 'ami-' and 8 "
                      f"or 17 hex digits, or remove it to resolve the image")

        for key in ("ssh_port", "http_port", "https_port"):
            port = values.get(key)
            if port and not 1 <= port <= 65535:
                self.fail(where, f"key {key!r} {port} is out of range; use 1-65535")

        if values.get("private_ip"):
            self._check_private_ip(where, values["private_ip"])
        if provider in ("virtualbox", "docker"):
            if not MIN_MEMORY_MB <= values["memory_mb"] <= MAX_MEMORY_MB:
                self.fail(where, f"key 'memory_mb' {values['memory_mb']} is out of "
                          f"range; use {MIN_MEMORY_MB}-{MAX_MEMORY_MB} (megabytes)")
            if not 1 <= values["cpus"] <= 64:
                self.fail(where, f"key 'cpus' {values['cpus']} is out of range; "
                          f"use 1-64")

    def _check_private_ip(self, where: str, value: str) -> None:
        try:
            address = ipaddress.IPv4Address(value)
        except ValueError:
            self.fail(where, f"key 'private_ip' {value!r} is not an IPv4 address; "
                      f"use one in VirtualBox's host-only range, 192.168.56.0/21")
            return
        if not address.is_private:
            self.fail(where, f"key 'private_ip' {value!r} is not a private address; "
                      f"use one in VirtualBox's host-only range, 192.168.56.0/21")

    # ----- whole file -------------------------------------------------------

    def _check_fleet(self, project: Project | None, names: list[str],
                     regions: dict[str, Region]) -> None:
        if project is not None and names and project.primary not in names:
            self.fail(
                "[project]",
                f"key 'primary' names unknown region {project.primary!r}; use "
                f"one of {', '.join(names)}",
            )

        # Each slot maps to the region and key that took it first.
        seen: dict[tuple[str, Any], tuple[str, str]] = {}
        for region in regions.values():
            for key in ("hostname", "ssh_port", "http_port", "https_port"):
                value = getattr(region, key)
                if not value:
                    continue
                if key.endswith("_port"):
                    slot: tuple[str, Any] = ("port", value)
                else:
                    slot = (key, value)
                if slot in seen:
                    owner, owner_key = seen[slot]
                    self.fail(
                        f"[regions.{region.name}]",
                        f"key {key!r} {value!r} is already used by {owner_key} in "
                        f"region {owner!r}; every port and hostname must be unique",
                    )
                else:
                    seen[slot] = (region.name, key)

    def _make_region(self, name: str, provider: str, values: dict[str, Any],
                     project: Project | None) -> Region:
        arch = values.get("arch") or instance_arch(provider, values.get("size", ""))
        ubuntu = values.get("ubuntu", "") if provider != "docker" else ""
        box = values.get("box") or ""
        if provider == "virtualbox" and not box:
            box = VIRTUALBOX_BOXES[ubuntu]
        latency_region = values.get("latency_region") or (
            name if provider == "aws" else "")
        return Region(
            name=name,
            provider=provider,
            ubuntu=ubuntu,
            size=values.get("size", ""),
            disk_gb=values["disk_gb"],
            disk_alert_percent=values["disk_alert_percent"],
            roles=list(values["roles"]),
            hostname=values.get("hostname", ""),
            nginx_pin=values["nginx_pin"],
            nginx_floor=values["nginx_floor"],
            is_primary=project is not None and project.primary == name,
            box_dir=self.path.resolve().parent / "boxes" / name,
            arch=arch,
            key_pair=values.get("key_pair", ""),
            private_key=values.get("private_key", ""),
            ami=values.get("ami", ""),
            latency_region=latency_region,
            zone=(values.get("zone") or name) if provider == "scaleway" else "",
            memory_mb=values.get("memory_mb", 2048),
            cpus=values.get("cpus", 2),
            private_ip=values.get("private_ip", ""),
            box=box,
            image=values.get("image", DOCKER_IMAGE),
            ssh_port=values.get("ssh_port", 0),
            http_port=values.get("http_port", 0),
            https_port=values.get("https_port", 0),
        )


_TOML_NAMES = {"str": "string", "int": "integer", "list": "list", "bool": "boolean"}


def _clip(text: str, limit: int = 60) -> str:
    """Shorten a long value for an error message, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _article(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _type_name(value: Any) -> str:
    names = {str: "string", int: "integer", float: "float", bool: "boolean",
             list: "list", dict: "table"}
    return names.get(type(value), type(value).__name__)
