"""Tests for the core tasks, run as `invoke` would be run by an operator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INVOKE = [sys.executable, "-m", "invoke"]
EU = "ami-0a1b2c3d4e5f60718"


def catalogue() -> dict:
    def item(region, image_id):
        return {"crsn": region, "id": image_id, "root_store": "ssd-gp3", "virt": "hvm"}

    return {"content_id": "com.ubuntu.cloud:released:aws", "format": "products:1.0",
            "datatype": "image-ids", "products": {
                "com.ubuntu.cloud:server:24.04:amd64": {"versions": {
                    "20241119": {"items": {"a": item("eu-west-1", EU),
                                           "b": item("us-east-1", "ami-11111111")}},
                }},
                "com.ubuntu.cloud:server:24.04:arm64": {"versions": {
                    "20241119": {"items": {"c": item("ap-southeast-2",
                                                     "ami-22222222")}},
                }},
            }}


@pytest.fixture
def env(tmp_path):
    """An operator's environment: key in HOME, seeded cache, no AWS credentials."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "vatrates.pem"
    key.write_text("placeholder\n")
    key.chmod(0o600)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "aws.json").write_text(json.dumps(catalogue()))
    (cache / "aws.json.date").write_text("2024-11-20T08:30:00Z\n")
    config = tmp_path / "regions.toml"
    shutil.copyfile(REPO / "regions.toml", config)

    values = {key: value for key, value in os.environ.items()
              if not key.startswith(("AWS_", "SCW_", "FLEET_"))}
    values.update(HOME=str(home), FLEET_IMAGE_CACHE=str(cache),
                  FLEET_CONFIG=str(config), AWS_EC2_METADATA_DISABLED="true",
                  AWS_CONFIG_FILE=str(tmp_path / "none"),
                  AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                  COLUMNS="200")
    return values


def invoke(args: list[str], env: dict, timeout: float = 120):
    return subprocess.run([*INVOKE, *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


def test_render_all_offline(env, tmp_path):
    result = invoke(["render", "--region", "all"], env)
    assert result.returncode == 0, result.stderr + result.stdout
    for name in ("eu-west-1", "us-east-1", "ap-southeast-2", "fr-par-1", "nl-ams-1",
                 "rehearsal", "local"):
        assert (tmp_path / "boxes" / name / "Vagrantfile").exists(), name
        assert name in result.stdout
    assert "ami-22222222" in (tmp_path / "boxes" / "ap-southeast-2" /
                              "Vagrantfile").read_text()


def test_render_twice_reports_no_change(env):
    invoke(["render", "--region", "local"], env)
    result = invoke(["render", "--region", "local"], env)
    assert result.returncode == 0
    assert "no change" in result.stdout


def test_ami_offline_prints_details(env):
    result = invoke(["ami", "--region", "eu-west-1"], env)
    assert result.returncode == 0, result.stderr
    assert EU in result.stdout
    assert "20241119" in result.stdout
    assert "catalogue aws.json" in result.stdout
    assert "2024-11-20T08:30:00Z" in result.stdout


def test_ami_without_any_source(env, tmp_path):
    env["FLEET_IMAGE_CACHE"] = str(tmp_path / "empty")
    result = invoke(["ami", "--region", "eu-west-1"], env)
    assert result.returncode == 1
    assert result.stdout == ""
    message = " ".join(result.stderr.split())
    assert "invoke ami --refresh" in message
    assert "invoke ami --import-file FILE" in message
    assert "AWS credentials" in message
    assert 'ami = "ami-..." in [regions.eu-west-1]' in message


def test_ami_import_file(env, tmp_path):
    saved = tmp_path / "saved-aws.json"
    saved.write_text(json.dumps(catalogue()))
    env["FLEET_IMAGE_CACHE"] = str(tmp_path / "fresh")
    result = invoke(["ami", "--region", "us-east-1", "--import-file", str(saved)], env)
    assert result.returncode == 0, result.stderr
    assert "ami-11111111" in result.stdout


def test_ami_online_from_ssm(env, monkeypatch, capsys):
    """Resolve through SSM and check the owner, with moto standing in for AWS."""
    import boto3
    from invoke import Context
    from moto import mock_aws
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    from fleet.cli import core

    for key in ("HOME", "FLEET_CONFIG", "FLEET_IMAGE_CACHE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="eu-west-1")
        image = ec2.describe_images(Owners=["099720109477"])["Images"][0]
        name = ("/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/"
                "ebs-gp3/ami-id")
        # Names under /aws are reserved, so the parameter Canonical publishes
        # is placed in moto's backend directly.
        ssm_backends[DEFAULT_ACCOUNT_ID]["eu-west-1"]._parameters[name].append(
            Parameter(account_id=DEFAULT_ACCOUNT_ID, name=name, value=image["ImageId"],
                      parameter_type="String", description=None,
                      allowed_pattern=None, keyid=None,
                      last_modified_date=datetime.now(tz=UTC), version=1,
                      data_type="aws:ec2:image"))
        core.ami(Context(), region="eu-west-1")

    output = capsys.readouterr().out
    assert image["ImageId"] in output
    assert "ssm" in output
    assert image["Name"].rsplit("-", 1)[-1] in output


def test_broken_config_rejected(env, tmp_path):
    config = Path(env["FLEET_CONFIG"])
    config.write_text(config.read_text().replace(
        "[regions.us-east-1]", "[regions.us-east-1b]"))
    result = invoke(["render", "--region", "all"], env)
    assert result.returncode == 2
    assert "[regions.us-east-1b]" in result.stderr
    assert "availability zone" in result.stderr
    assert str(config) in result.stderr


def test_unknown_region_lists_valid(env):
    result = invoke(["status", "--region", "mars-1"], env)
    assert result.returncode == 2
    assert "'mars-1'" in result.stderr
    assert "eu-west-1" in result.stderr


def test_build_stops_at_first_failure(env, tmp_path):
    (Path(env["HOME"]) / ".ssh" / "vatrates.pem").unlink()
    result = invoke(["build", "--region", "eu-west-1"], env)
    assert result.returncode == 1
    assert "step render failed on region eu-west-1" in result.stderr
    log = tmp_path / "boxes" / "eu-west-1" / "logs" / "render.log"
    assert f"log file: {log}" in result.stderr.replace("\n", "")
    assert "FAILED" in result.stdout
    assert "provision" not in result.stdout
    assert log.exists()


def test_config_option_overrides_env(env, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text((REPO / "regions.toml").read_text().replace(
        "[regions.local]", "[regions.lab-one]"))
    result = invoke(["render", "--region", "lab-one", "--config", str(other)], env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "boxes" / "lab-one" / "Vagrantfile").exists()


def test_render_all_names_every_failed_region(env):
    (Path(env["HOME"]) / ".ssh" / "vatrates.pem").unlink()
    result = invoke(["render", "--region", "all"], env)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    # Every cloud region needs the key, in regions.toml's order.
    cloud = ("eu-west-1", "us-east-1", "ap-southeast-2", "fr-par-1", "nl-ams-1")
    for name in cloud:
        assert f"step render failed on region {name}:" in message
    positions = [message.index(f"region {name}:") for name in cloud]
    assert positions == sorted(positions)
    assert "5 regions failed:" in message
    assert "region local:" not in message


def test_missing_key_message_gives_one_fix(env):
    (Path(env["HOME"]) / ".ssh" / "vatrates.pem").unlink()
    result = invoke(["render", "--region", "eu-west-1"], env)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "create it (mode 0600) or set private_key to your key." in message
    assert "Without it Vagrant waits for SSH until it times out" in message


@pytest.mark.parametrize("task", ["ami", "render", "up", "provision", "deploy",
                                  "test", "build", "status", "destroy"])
def test_region_help_names_default_and_lists(env, task):
    result = invoke([task, "--help"], env)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "(default: local)" in text
    assert "a comma list such as eu-west-1,local acts on each region named" in text
    assert "all on every region in the regions file" in text


def test_unknown_region_suggests_close_name(env):
    result = invoke(["status", "--region", "eu-west1"], env)
    assert result.returncode == 2
    assert "did you mean 'eu-west-1'?" in result.stderr


@pytest.mark.parametrize(("task", "note"), [("status", "not_rendered"),
                                            ("destroy", "nothing to destroy")])
def test_status_and_destroy_tables_drop_step(env, task, note):
    result = invoke([task, "--region", "local"], env)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "region" in line)
    assert "result" in header
    assert "step" not in header
    assert note in result.stdout


def test_build_table_keeps_step(env):
    (Path(env["HOME"]) / ".ssh" / "vatrates.pem").unlink()
    result = invoke(["build", "--region", "eu-west-1"], env)
    header = next(line for line in result.stdout.splitlines() if "region" in line)
    assert "step" in header
