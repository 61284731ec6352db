"""Tests for fleet.regions: loading, defaults, selection and every validation error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fleet import regions
from fleet.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

HEAD = """
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


def write(tmp_path: Path, body: str, head: str = HEAD) -> Path:
    path = tmp_path / "regions.toml"
    path.write_text(textwrap.dedent(head) + textwrap.dedent(body), encoding="utf-8")
    return path


def load_error(tmp_path: Path, body: str, head: str = HEAD) -> str:
    path = write(tmp_path, body, head)
    with pytest.raises(ConfigError) as caught:
        regions.load(path)
    return str(caught.value)


def test_shipped_file_loads():
    fleet = regions.load(REPO / "regions.toml")
    names = set(fleet.regions)
    assert {"eu-west-1", "us-east-1", "ap-southeast-2", "fr-par-1", "nl-ams-1",
            "rehearsal", "local"} <= names
    assert fleet.regions[fleet.project.primary].is_primary
    providers = {r.provider for r in fleet.regions.values()}
    assert providers == {"aws", "scaleway", "virtualbox", "docker"}
    assert fleet.warnings == []


def test_shipped_contract_values():
    fleet = regions.load(REPO / "regions.toml")
    local = fleet.regions["local"]
    assert (local.ssh_port, local.http_port, local.https_port) == (2222, 8080, 8443)
    assert local.box_dir == REPO / "boxes" / "local"
    assert fleet.regions["ap-southeast-2"].arch == "arm64"
    assert fleet.regions["fr-par-1"].zone == "fr-par-1"
    assert fleet.project.operator_keys == REPO / "keys" / "operators.pub"


def test_defaults_merge_and_override(tmp_path):
    path = write(tmp_path, """
        [defaults]
        disk_gb = 30
        roles = ["base", "nginx"]

        [regions.us-east-1]
        provider = "aws"
        size = "t3.small"
        hostname = "us-east-1.api.vatrates.example"
        key_pair = "vatrates"
        private_key = "~/.ssh/vatrates.pem"
        disk_gb = 40
    """, head=HEAD.replace("[regions.eu-west-1]",
                           '[regions.eu-west-1]\nroles = ["base"]'))
    fleet = regions.load(path)
    assert fleet.regions["us-east-1"].disk_gb == 40
    assert fleet.regions["eu-west-1"].disk_gb == 30
    assert fleet.regions["eu-west-1"].roles == ["base"]
    assert fleet.regions["us-east-1"].roles == ["base", "nginx"]


def test_select_specs(tmp_path):
    fleet = regions.load(REPO / "regions.toml")
    assert [r.name for r in fleet.select("local")] == ["local"]
    assert [r.name for r in fleet.select("local, eu-west-1")] == ["local", "eu-west-1"]
    assert len(fleet.select("all")) == len(fleet.regions)


def test_select_unknown_lists_valid(tmp_path):
    fleet = regions.load(REPO / "regions.toml")
    with pytest.raises(ConfigError) as caught:
        fleet.select("eu-west-9")
    assert "'eu-west-9'" in str(caught.value)
    assert "eu-west-1" in str(caught.value)


def test_missing_file_names_fix(tmp_path):
    with pytest.raises(ConfigError) as caught:
        regions.load(tmp_path / "nope.toml")
    assert "nope.toml" in str(caught.value)
    assert "--config" in str(caught.value)


def test_config_from_environment(tmp_path, monkeypatch):
    path = write(tmp_path, "")
    monkeypatch.setenv("FLEET_CONFIG", str(path))
    assert regions.load().path == path.resolve()


def test_unknown_key_suggests(tmp_path):
    message = load_error(tmp_path, 'disk_size = 20\n', head=HEAD)
    assert str(tmp_path / "regions.toml") in message
    assert "[regions.eu-west-1]" in message
    assert "'disk_size'" in message
    assert "did you mean 'disk_gb'?" in message


def test_unknown_project_key(tmp_path):
    message = load_error(tmp_path, "", head=HEAD.replace(
        'primary = "eu-west-1"', 'primary = "eu-west-1"\nprimery = "x"'))
    assert "[project]" in message
    assert "'primery'" in message


def test_unknown_top_level_table(tmp_path):
    message = load_error(tmp_path, "[region.x]\nprovider = 'aws'\n")
    assert "unknown table or key 'region'" in message


def test_key_of_other_provider(tmp_path):
    message = load_error(tmp_path, "", head=HEAD + 'ssh_port = 2222\n')
    assert "'ssh_port' is not used by aws regions" in message


@pytest.mark.parametrize(("line", "expected"), [
    ('disk_gb = "20"', ("key 'disk_gb' must be an integer, got the string '20'; "
                        "write disk_gb = 20 (no quotes)")),
    ("disk_gb = true", "key 'disk_gb' must be an integer, got the boolean True"),
    ("size = 3", "key 'size' must be a string, got the integer 3"),
    ('roles = "base"', "key 'roles' must be a list"),
    ("roles = [1]", "key 'roles' must be a list of strings"),
])
def test_wrong_types(tmp_path, line, expected):
    head = HEAD.replace('size = "t3.small"\n', "") if line.startswith("size") else HEAD
    message = load_error(tmp_path, "", head=head + line + "\n")
    assert expected in message
    assert "[regions.eu-west-1]" in message


def test_float_release_hints_quotes(tmp_path):
    message = load_error(tmp_path, "", head=HEAD + "ubuntu = 24.04\n")
    assert "key 'ubuntu' must be a string, got the float 24.04" in message
    assert 'quote it: ubuntu = "24.04"' in message


def test_duplicate_region_table(tmp_path):
    message = load_error(tmp_path, """
        [regions.eu-west-1]
        provider = "aws"
    """)
    assert "region 'eu-west-1' is defined twice" in message
    assert "line" in message
    assert str(tmp_path / "regions.toml") in message


def test_duplicate_hostname(tmp_path):
    message = load_error(tmp_path, """
        [regions.us-east-1]
        provider = "aws"
        size = "t3.small"
        hostname = "eu-west-1.api.vatrates.example"
        key_pair = "vatrates"
        private_key = "~/.ssh/vatrates.pem"
    """)
    assert "[regions.us-east-1]" in message
    assert "already used by hostname in region 'eu-west-1'" in message


def test_duplicate_port(tmp_path):
    message = load_error(tmp_path, """
        [regions.a]
        provider = "docker"
        hostname = "a.vatrates.test"
        ssh_port = 2222
        http_port = 8080
        https_port = 8443

        [regions.b]
        provider = "docker"
        hostname = "b.vatrates.test"
        ssh_port = 2223
        http_port = 8080
        https_port = 8444
    """)
    assert "[regions.b]" in message
    assert "'http_port' 8080 is already used by http_port in region 'a'" in message


def test_port_reused_within_region(tmp_path):
    message = load_error(tmp_path, """
        [regions.local]
        provider = "docker"
        hostname = "local.vatrates.test"
        ssh_port = 2222
        http_port = 8443
        https_port = 8443
    """)
    assert ("[regions.local]: key 'https_port' 8443 is already used by http_port "
            "in region 'local'") in message


def test_quoted_port_not_also_missing(tmp_path):
    message = load_error(tmp_path, """
        [regions.local]
        provider = "docker"
        hostname = "local.vatrates.test"
        ssh_port = "2222"
        http_port = 8080
        https_port = 8443
    """)
    assert ("key 'ssh_port' must be an integer, got the string '2222'; write "
            "ssh_port = 2222 (no quotes)") in message
    assert "missing key 'ssh_port'" not in message
    assert "1 problem in" in message


def test_availability_zone_as_region(tmp_path):
    message = load_error(tmp_path, """
        [regions.us-west-2b]
        provider = "aws"
        size = "t3.small"
        hostname = "us-west-2.api.vatrates.example"
        key_pair = "vatrates"
        private_key = "~/.ssh/vatrates.pem"
    """)
    assert "[regions.us-west-2b]" in message
    assert "'us-west-2b' is an availability zone, not a region" in message
    assert "use the region 'us-west-2'" in message


def test_unknown_aws_region(tmp_path):
    message = load_error(tmp_path, "", head=HEAD.replace("eu-west-1]", "eu-wset-1]"))
    assert "'eu-wset-1' is not an AWS region" in message
    assert "did you mean" in message


def test_scaleway_zone_does_not_exist(tmp_path):
    message = load_error(tmp_path, """
        [regions.fr-par-9]
        provider = "scaleway"
        size = "DEV1-S"
        hostname = "fr-par-9.api.vatrates.example"
        private_key = "~/.ssh/vatrates.pem"
        latency_region = "eu-west-3"
    """)
    assert "[regions.fr-par-9]" in message
    assert "'fr-par-9' is not a Scaleway zone" in message
    assert "valid zones: fr-par-1, fr-par-2" in message


def test_scaleway_zone_key(tmp_path):
    message = load_error(tmp_path, """
        [regions.paris]
        provider = "scaleway"
        zone = "fr-paris-1"
        size = "DEV1-S"
        hostname = "paris.api.vatrates.example"
        private_key = "~/.ssh/vatrates.pem"
        latency_region = "eu-west-3"
    """)
    assert "key 'zone' 'fr-paris-1' is not a Scaleway zone" in message


def test_scaleway_latency_region_zone(tmp_path):
    message = load_error(tmp_path, """
        [regions.fr-par-1]
        provider = "scaleway"
        size = "DEV1-S"
        hostname = "fr-par-1.api.vatrates.example"
        private_key = "~/.ssh/vatrates.pem"
        latency_region = "eu-west-3a"
    """)
    assert "key 'latency_region' 'eu-west-3a' is an availability zone" in message


def test_arch_mismatch_aws(tmp_path):
    message = load_error(tmp_path, "", head=HEAD.replace(
        'size = "t3.small"', 'size = "t4g.small"\narch = "amd64"'))
    assert "key 'arch' is 'amd64' but instance type 't4g.small' runs arm64" in message


def test_arch_mismatch_scaleway(tmp_path):
    message = load_error(tmp_path, """
        [regions.fr-par-2]
        provider = "scaleway"
        size = "AMP2-C1"
        arch = "amd64"
        hostname = "fr-par-2.api.vatrates.example"
        private_key = "~/.ssh/vatrates.pem"
        latency_region = "eu-west-3"
    """)
    assert "instance type 'AMP2-C1' runs arm64" in message


@pytest.mark.parametrize(("size", "arch"), [
    ("t3.small", "amd64"), ("t4g.small", "arm64"), ("m7gd.large", "arm64"),
    ("c6gn.xlarge", "arm64"), ("a1.medium", "arm64"), ("m5a.large", "amd64"),
    ("g4dn.xlarge", "amd64"),
])
def test_aws_instance_arch(size, arch):
    assert regions.instance_arch("aws", size) == arch


def test_bad_instance_type(tmp_path):
    message = load_error(tmp_path, "", head=HEAD.replace('"t3.small"', '"t3small"'))
    assert "key 'size' 't3small' is not an aws instance type" in message


def test_small_disk_warns(tmp_path):
    fleet = regions.load(write(tmp_path, "", head=HEAD + "disk_gb = 8\n"))
    assert len(fleet.warnings) == 1
    assert "disk_gb = 8 is below 16 GB" in fleet.warnings[0]


def test_tiny_disk_rejected(tmp_path):
    message = load_error(tmp_path, "", head=HEAD + "disk_gb = 4\n")
    assert "key 'disk_gb' 4 is out of range" in message


def test_unknown_role(tmp_path):
    message = load_error(tmp_path, "", head=HEAD + 'roles = ["base", "ngnix"]\n')
    assert "unknown role 'ngnix'; did you mean 'nginx'?" in message


def test_bad_default_role_reported_once(tmp_path):
    head = HEAD.replace("[regions.eu-west-1]",
                        '[defaults]\nroles = ["base", "ngnix"]\n\n[regions.eu-west-1]')
    message = load_error(tmp_path, """
        [regions.us-east-1]
        provider = "aws"
        size = "t3.small"
        hostname = "us-east-1.api.vatrates.example"
        key_pair = "vatrates"
        private_key = "~/.ssh/vatrates.pem"
    """, head=head)
    assert message.count("unknown role 'ngnix'") == 1
    assert "[defaults]: key 'roles' has unknown role 'ngnix'; did you mean" in message


def test_shared_library_is_no_role(tmp_path):
    assert "lib" not in regions.provision_steps()
    assert "base" in regions.provision_steps()
    message = load_error(tmp_path, "", head=HEAD + 'roles = ["base", "lib"]\n')
    assert "unknown role 'lib'" in message
    assert ", lib," not in message


def test_provision_steps_need_shebang(tmp_path):
    (tmp_path / "step.sh").write_text("#!/usr/bin/env bash\n")
    (tmp_path / "helpers.sh").write_text("# shellcheck shell=bash\n")
    assert regions.provision_steps(tmp_path) == ["step"]


def test_primary_unknown_region(tmp_path):
    message = load_error(tmp_path, "", head=HEAD.replace(
        'primary = "eu-west-1"', 'primary = "eu-west-2"'))
    assert "[project]" in message
    assert "key 'primary' names unknown region 'eu-west-2'" in message


def test_missing_required_keys(tmp_path):
    message = load_error(tmp_path, "", head=HEAD.replace('key_pair = "vatrates"\n', ""))
    assert "missing key 'key_pair', needed by aws regions" in message


def test_unknown_provider(tmp_path):
    message = load_error(tmp_path, "", head=HEAD.replace('"aws"', '"gcp"'))
    assert "key 'provider' has unknown value 'gcp'" in message


def test_bad_ubuntu_release(tmp_path):
    message = load_error(tmp_path, "", head=HEAD + 'ubuntu = "23.10"\n')
    assert "unsupported release '23.10'" in message


def test_bad_pinned_ami(tmp_path):
    message = load_error(tmp_path, "", head=HEAD + 'ami = "ami-123"\n')
    assert "key 'ami' 'ami-123' is not an AMI id" in message


def test_all_problems_reported_together(tmp_path):
    message = load_error(tmp_path, "", head=HEAD.replace(
        'primary = "eu-west-1"', 'primary = "nowhere"') + "disk_gb = 2\nfoo = 1\n")
    assert message.startswith("3 problems in")
    assert "'nowhere'" in message
    assert "'foo'" in message
    assert "'disk_gb' 2" in message


def test_invalid_toml_names_line(tmp_path):
    message = load_error(tmp_path, "[regions.x\n")
    assert "invalid TOML" in message
    assert "line" in message


def test_deeply_nested_toml_rejected(tmp_path):
    path = tmp_path / "regions.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        regions.load(path)
    assert str(path) in str(caught.value)
    assert "nested too deeply" in str(caught.value)


@pytest.mark.parametrize(("line", "key"), [
    ('hostname = "eu-west-1.api.vatrates.example\\n"', "hostname"),
    ('size = "t3.small\\n"', "size"),
    ('ami = "ami-0123456789abcdef0\\n"', "ami"),
    ('nginx_floor = "1.11.9\\n"', "nginx_floor"),
    ('nginx_pin = "1.24.*\\n"', "nginx_pin"),
])
def test_trailing_newline_rejected(tmp_path, line, key):
    # "$" in a pattern also matches before a final newline; fullmatch does not.
    kept = [row for row in HEAD.splitlines() if not row.startswith(f"{key} =")]
    message = load_error(tmp_path, "", head="\n".join(kept) + "\n" + line + "\n")
    assert f"key '{key}'" in message
    assert "\\n" in message


def test_region_name_with_newline_rejected(tmp_path):
    body = """
    [regions."local\\n"]
    provider = "docker"
    hostname = "local.vatrates.test"
    ssh_port = 2301
    http_port = 2302
    https_port = 2303
    """
    message = load_error(tmp_path, body)
    assert "region name 'local\\n' is invalid" in message


@pytest.mark.parametrize("image", ["x; rm -rf /", "Upper:case", "box:", "a b"])
def test_docker_image_reference_checked(tmp_path, image):
    body = f"""
    [regions.local]
    provider = "docker"
    hostname = "local.vatrates.test"
    ssh_port = 2301
    http_port = 2302
    https_port = 2303
    image = "{image}"
    """
    message = load_error(tmp_path, body)
    assert f"key 'image' {image!r} is not a Docker image reference" in message


@pytest.mark.parametrize("image", [
    "vatfleet-box:bookworm", "debian:12", "localhost:5000/lab/box:1.0",
    "ghcr.io/team/box@sha256:" + "a" * 64,
])
def test_docker_image_reference_accepted(tmp_path, image):
    body = f"""
    [regions.local]
    provider = "docker"
    hostname = "local.vatrates.test"
    ssh_port = 2301
    http_port = 2302
    https_port = 2303
    image = "{image}"
    """
    fleet = regions.load(write(tmp_path, body))
    assert fleet.regions["local"].image == image


def test_key_pair_must_be_ascii(tmp_path):
    head = HEAD.replace('key_pair = "vatrates"', 'key_pair = "clé"')
    message = load_error(tmp_path, "", head=head)
    assert "key 'key_pair' 'clé' is not an EC2 key pair name" in message


def test_select_all_with_names_rejected():
    fleet = regions.load(REPO / "regions.toml")
    with pytest.raises(ConfigError) as caught:
        fleet.select("all,local")
    assert "combines 'all' with other names" in str(caught.value)
    assert "unknown region" not in str(caught.value)


def test_select_suggests_close_name():
    fleet = regions.load(REPO / "regions.toml")
    with pytest.raises(ConfigError) as caught:
        fleet.select("LOCAL")
    assert "did you mean 'local'?" in str(caught.value)


def test_select_clips_long_name():
    fleet = regions.load(REPO / "regions.toml")
    with pytest.raises(ConfigError) as caught:
        fleet.select("a" * 3000)
    assert len(str(caught.value)) < 600
    assert "(3000 characters)" in str(caught.value)


def test_select_suggests_missing_dash():
    fleet = regions.load(REPO / "regions.toml")
    with pytest.raises(ConfigError) as caught:
        fleet.select("eu-west1")
    assert "unknown region 'eu-west1'; did you mean 'eu-west-1'?" in str(caught.value)


def test_select_several_unknown_names():
    fleet = regions.load(REPO / "regions.toml")
    with pytest.raises(ConfigError) as caught:
        fleet.select("eu-west1,us-east1,mars-1")
    message = str(caught.value)
    assert "unknown regions 'eu-west1', 'us-east1', 'mars-1'. For 'eu-west1'," in (
        message)
    assert "For 'eu-west1', did you mean 'eu-west-1'?" in message
    assert "For 'us-east1', did you mean 'us-east-1'?" in message
    assert "'us-east-1'? Valid regions: eu-west-1," in message


def test_select_availability_zone_hint(tmp_path):
    path = write(tmp_path, """
        [regions.us-west-2]
        provider = "aws"
        size = "t3.small"
        hostname = "us-west-2.api.vatrates.example"
        key_pair = "vatrates"
        private_key = "~/.ssh/vatrates.pem"
    """)
    fleet = regions.load(path)
    with pytest.raises(ConfigError) as caught:
        fleet.select("us-west-2b")
    assert ("'us-west-2b' is an availability zone, not a region, so use "
            "'us-west-2'.") in str(caught.value)


def test_select_zone_of_region_not_in_file():
    fleet = regions.load(REPO / "regions.toml")
    with pytest.raises(ConfigError) as caught:
        fleet.select("us-west-2b")
    assert ("unknown region 'us-west-2b'. 'us-west-2b' is an availability zone, "
            "not a region, and this file has no region 'us-west-2'. Valid regions:"
            ) in str(caught.value)


@pytest.mark.parametrize("memory", [256, 999999999999])
def test_memory_out_of_range(tmp_path, memory):
    message = load_error(tmp_path, f"""
        [regions.rehearsal]
        provider = "virtualbox"
        ubuntu = "22.04"
        hostname = "rehearsal.vatrates.test"
        memory_mb = {memory}
    """)
    assert f"key 'memory_mb' {memory} is out of range; use 512-262144" in message
