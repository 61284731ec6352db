"""Tests for fleet.render: per-provider output, determinism, keys and secrets."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from fleet import regions, render
from fleet.errors import RenderError
from fleet.images import Image

REPO = Path(__file__).resolve().parents[2]
AMI = "ami-0a1b2c3d4e5f60718"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fake HOME holding the private key the shipped cloud regions name."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "vatrates.pem"
    key.write_text("not a real key\n")
    key.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def fleet(home):
    """The shipped regions file, as it is (render_text writes nothing)."""
    return regions.load(REPO / "regions.toml")


@pytest.fixture
def tmp_fleet(home, tmp_path):
    """A copy of the shipped regions file whose boxes/ is under tmp_path."""
    config = tmp_path / "regions.toml"
    shutil.copyfile(REPO / "regions.toml", config)
    return regions.load(config)


def image_for(region) -> Image:
    return Image(AMI, "20241119", "catalogue aws.json", "2024-11-20", region.name,
                 region.ubuntu, region.arch)


def rendered(fleet, name: str) -> str:
    region = fleet.regions[name]
    image = image_for(region) if region.provider == "aws" else None
    return render.render_text(fleet, region, image)


def test_aws_settings(fleet):
    text = rendered(fleet, "eu-west-1")
    assert 'aws.region = "eu-west-1"' in text
    assert f'aws.ami = "{AMI}"' in text
    assert 'aws.instance_type = "t3.small"' in text
    assert 'aws.keypair_name = "vatrates"' in text
    assert 'aws.security_groups = ["vatrates-eu-west-1"]' in text
    assert '"Ebs.VolumeSize" => 20' in text
    assert 'override.ssh.username = "ubuntu"' in text
    assert 'override.ssh.private_key_path = "~/.ssh/vatrates.pem"' in text
    assert '"project" => "vatrates"' in text
    assert '"region" => "eu-west-1"' in text
    assert '"run" => ENV.fetch("VATFLEET_RUN", "manual")' in text


def test_aws_uses_gp3_for_noble(fleet):
    assert '"Ebs.VolumeType" => "gp3"' in rendered(fleet, "eu-west-1")


def test_scaleway_is_managed_host(fleet):
    text = rendered(fleet, "fr-par-1")
    assert 'box.vm.provider "managed"' in text
    assert "manifest.json" in text
    assert "vagrant-scaleway plugin speaks Scaleway's retired" in text


def test_virtualbox_settings(fleet):
    text = rendered(fleet, "rehearsal")
    assert 'box.vm.box = "ubuntu/jammy64"' in text
    assert 'ip: "192.168.56.10"' in text
    assert "vb.memory = 2048" in text
    assert "vb.cpus = 2" in text


def test_docker_settings(fleet):
    text = rendered(fleet, "local")
    assert 'docker.image = "vatfleet-box:bookworm"' in text
    assert "docker.has_ssh = true" in text
    assert "docker.remains_running = true" in text
    assert '"--tmpfs", "/run"' in text
    assert '"-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"' in text
    for guest, host in ((22, 2222), (80, 8080), (443, 8443)):
        assert f'guest: {guest}, host: {host},\n      host_ip: "127.0.0.1"' in text
    assert 'File.expand_path("../../.lab/ssh/id_ed25519", __dir__)' in text
    assert 'synced_folder ".", "/vagrant", disabled: true' in text


def test_docker_key_relative_to_other_config(tmp_fleet):
    region = tmp_fleet.regions["local"]
    text = render.render_text(tmp_fleet, region)
    relative = os.path.relpath(render.LAB_KEY, region.box_dir)
    assert f'File.expand_path("{relative}", __dir__)' in text


def test_every_provider_names_machine(fleet):
    for name in fleet.regions:
        assert f'config.vm.define "{name}" do |box|' in rendered(fleet, name)


def test_render_is_byte_identical(tmp_fleet):
    fleet = tmp_fleet
    for region in fleet.regions.values():
        image = image_for(region) if region.provider == "aws" else None
        first, changed = render.render(fleet, region, image)
        content = first.read_bytes()
        second, changed_again = render.render(fleet, region, image)
        assert changed
        assert not changed_again
        assert second.read_bytes() == content


def test_no_machine_path_or_secret(fleet, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAABCDEFGHIJKLMNOP")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY",
                       "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("SCW_SECRET_KEY", "11111111-2222-3333-4444-555555555555")
    for name in fleet.regions:
        text = rendered(fleet, name)
        assert "AKIA" not in text
        assert "wJalrXUtnFEMI" not in text
        assert "11111111-2222" not in text
        assert str(Path.home()) not in text
        assert str(REPO) not in text
        assert not re.search(r"/(root|home|tmp|work)/", text)


def test_secret_in_settings_rejected(fleet):
    region = fleet.regions["eu-west-1"]
    region.key_pair = "AKIAABCDEFGHIJKLMNOP"
    with pytest.raises(RenderError) as caught:
        render.render_text(fleet, region, image_for(region))
    assert "looks like a credential" in str(caught.value)


def test_missing_private_key_named(fleet, tmp_path):
    (Path.home() / ".ssh" / "vatrates.pem").unlink()
    with pytest.raises(RenderError) as caught:
        rendered(fleet, "eu-west-1")
    message = str(caught.value)
    assert "[regions.eu-west-1]" in message
    assert "~/.ssh/vatrates.pem not found" in message


def test_open_private_key_rejected(fleet):
    (Path.home() / ".ssh" / "vatrates.pem").chmod(0o644)
    with pytest.raises(RenderError) as caught:
        rendered(fleet, "fr-par-1")
    assert "mode 0644" in str(caught.value)
    assert "chmod 600" in str(caught.value)


def test_aws_without_image_source_fails(fleet, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_IMAGE_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("fleet.images.has_aws_credentials", lambda: False)
    with pytest.raises(Exception) as caught:
        render.render_text(fleet, fleet.regions["eu-west-1"])
    assert "invoke ami --refresh" in str(caught.value)


def test_aws_image_from_cache(fleet, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    item = {"crsn": "eu-west-1", "id": AMI, "root_store": "ssd-gp3", "virt": "hvm"}
    sample = {"format": "products:1.0", "products": {
        "com.ubuntu.cloud:server:24.04:amd64": {"versions": {
            "20241119.1": {"items": {"euw1hs": item}}}}}}
    (cache / "aws.json").write_text(json.dumps(sample))
    monkeypatch.setattr("fleet.images.has_aws_credentials", lambda: False)
    text = render.render_text(fleet, fleet.regions["eu-west-1"], cache_dir=cache)
    assert 'aws.ami = "ami-0a1b2c3d4e5f60718"' in text
    assert "serial 20241119.1" in text


@pytest.mark.parametrize(("value", "expected"), [
    ("plain", '"plain"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("#{`id`}", '"\\#{`id`}"'),
    ("back\\slash", '"back\\\\slash"'),
])
def test_ruby_string_quoting(value, expected):
    assert render.ruby_string(value) == expected


def test_config_name_stays_in_comment(home, tmp_path):
    config = tmp_path / 'x\nputs("injected")\n#.toml'
    shutil.copyfile(REPO / "regions.toml", config)
    fleet = regions.load(config)
    text = rendered(fleet, "local")
    assert '\nputs("injected")' not in text
    assert 'x\\nputs("injected")\\n#.toml' in text


def test_catalogue_serial_stays_in_comment(fleet):
    region = fleet.regions["eu-west-1"]
    image = Image(AMI, "20241119\n", "catalogue\raws.json", "2024-11-20",
                  region.name, region.ubuntu, region.arch)
    text = render.render_text(fleet, region, image)
    image_line = next(line for line in text.splitlines() if "# Image:" in line)
    assert image_line.strip() == "# Image: catalogue\\raws.json, serial 20241119\\n."


def test_image_without_serial_has_none_written(fleet):
    region = fleet.regions["eu-west-1"]
    image = Image(AMI, "", "pinned in regions.toml", "", region.name,
                  region.ubuntu, region.arch)
    text = render.render_text(fleet, region, image)
    assert "# Image: pinned in regions.toml." in text
    assert "serial" not in text
