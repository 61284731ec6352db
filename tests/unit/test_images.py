"""Tests for fleet.images: catalogue picking, the cache, SSM through moto."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from fleet import images, regions
from fleet.errors import ImageError

REPO = Path(__file__).resolve().parents[2]
EU = "ami-0a1b2c3d4e5f60718"
EU_OLD = "ami-0f0e0d0c0b0a09080"


def item(region: str, image_id: str, virt: str = "hvm", store: str = "ssd-gp3"):
    return {"crsn": region, "id": image_id, "root_store": store, "virt": virt,
            "root_size": "8"}


def catalogue(products: dict) -> dict:
    """An aws.json in the simplestreams products:1.0 format Canonical publishes."""
    return {
        "content_id": "com.ubuntu.cloud:released:aws",
        "datatype": "image-ids",
        "format": "products:1.0",
        "updated": "Tue, 23 Apr 2024 12:00:00 +0000",
        "products": products,
    }


def product(release: str, arch: str, versions: dict) -> dict:
    codename = regions.UBUNTU_RELEASES[release]
    return {
        "arch": arch, "os": "ubuntu", "release": codename, "version": release,
        "versions": {
            serial: {"items": items, "label": "release",
                     "pubname": f"ubuntu-{codename}-{release}-{arch}-server-{serial}"}
            for serial, items in versions.items()
        },
    }


SAMPLE = catalogue({
    "com.ubuntu.cloud:server:24.04:amd64": product("24.04", "amd64", {
        "20240423": {"euw1hs": item("eu-west-1", EU_OLD),
                     "use1hs": item("us-east-1", "ami-11111111")},
        "20241119.1": {"euw1hs": item("eu-west-1", EU),
                       "euw1pe": item("eu-west-1", "ami-22222222", virt="pv",
                                      store="ebs"),
                       "euw1hi": item("eu-west-1", "ami-33333333",
                                      store="instance")},
        "20240301": {"euw1hs": item("eu-west-1", "ami-44444444")},
    }),
    "com.ubuntu.cloud:server:24.04:arm64": product("24.04", "arm64", {
        "20241119": {"apse2hs": item("ap-southeast-2", "ami-55555555")},
    }),
    "com.ubuntu.cloud:server:22.04:amd64": product("22.04", "amd64", {
        "20241001": {"euw1hs": item("eu-west-1", "ami-66666666", store="ssd"),
                     "euc1pe": item("eu-central-1", "ami-77777777", virt="pv",
                                    store="ssd")},
    }),
})

# The locator's releasesTable body: ids wrapped in a console link, and a
# trailing comma after the last row as it has been published.
RELEASES_TABLE = """{
"aaData": [
["Amazon AWS","eu-west-1","noble","24.04 LTS","amd64","hvm-ssd-gp3","20240423","<a href=\\"https://console.aws.amazon.com/ec2/home?region=eu-west-1#launchAmi=ami-0123456789abcdef0\\">ami-0123456789abcdef0</a>"],
["Amazon AWS","eu-west-1","noble","24.04 LTS","amd64","hvm-ssd-gp3","20241119","<a href=\\"https://console.aws.amazon.com/ec2/home?region=eu-west-1#launchAmi=ami-abcdef01\\">ami-abcdef01</a>"],
["Amazon AWS","eu-west-1","noble","24.04 LTS","amd64","hvm-instance","20241201","<a href=\\"https://console.aws.amazon.com/ec2/home?region=eu-west-1#launchAmi=ami-99999999\\">ami-99999999</a>"],
["Amazon GovCloud","us-gov-west-1","noble","24.04 LTS","amd64","hvm-ssd-gp3","20241201","<a href=\\"#\\">ami-88888888</a>"],
["Amazon AWS","sa-east-1","jammy","22.04 LTS","amd64","pv-ssd","20241201","<a href=\\"#\\">ami-0aaaaaaaaaaaaaaaa</a>"],
]
}
"""


@pytest.mark.parametrize(("region", "release", "arch", "expected"), [
    ("eu-west-1", "24.04", "amd64", (EU, "20241119.1")),
    ("us-east-1", "24.04", "amd64", ("ami-11111111", "20240423")),
    ("ap-southeast-2", "24.04", "arm64", ("ami-55555555", "20241119")),
    ("eu-west-1", "22.04", "amd64", ("ami-66666666", "20241001")),
])
def test_simplestreams_picks_newest_match(region, release, arch, expected):
    assert images.pick_from_simplestreams(SAMPLE, region, release, arch) == expected


def test_simplestreams_pv_only_region_rejected():
    with pytest.raises(ImageError) as caught:
        images.pick_from_simplestreams(SAMPLE, "eu-central-1", "22.04", "amd64")
    assert "no HVM SSD image" in str(caught.value)
    assert "pv/ssd" in str(caught.value)


def test_simplestreams_missing_region_no_fallback():
    with pytest.raises(ImageError) as caught:
        images.pick_from_simplestreams(SAMPLE, "eu-west-3", "24.04", "amd64")
    assert "eu-west-3" in str(caught.value)


def test_simplestreams_no_other_release_fallback():
    with pytest.raises(ImageError) as caught:
        images.pick_from_simplestreams(SAMPLE, "us-east-1", "22.04", "amd64")
    assert "22.04" in str(caught.value)


def test_simplestreams_no_other_arch_fallback():
    with pytest.raises(ImageError) as caught:
        images.pick_from_simplestreams(SAMPLE, "eu-west-1", "22.04", "arm64")
    assert "com.ubuntu.cloud:server:22.04:arm64" in str(caught.value)


def test_simplestreams_rejects_malformed_ids():
    data = catalogue({"com.ubuntu.cloud:server:24.04:amd64": product(
        "24.04", "amd64", {"20250101": {"x": item("eu-west-1", "ami-123456789")},
                           "20240101": {"y": item("eu-west-1", "ami-12345678")}})})
    assert images.pick_from_simplestreams(data, "eu-west-1", "24.04", "amd64") == (
        "ami-12345678", "20240101")


def test_releases_table_trailing_comma_parses():
    rows = images.parse_releases_table(RELEASES_TABLE)
    assert len(rows) == 5
    with pytest.raises(json.JSONDecodeError):
        json.loads(RELEASES_TABLE)


def test_releases_table_newest_ssd_row():
    rows = images.parse_releases_table(RELEASES_TABLE)
    assert images.pick_from_releases_table(rows, "eu-west-1", "24.04", "amd64") == (
        "ami-abcdef01", "20241119")


def test_releases_table_17_digit_id():
    rows = images.parse_releases_table(RELEASES_TABLE)
    older = [row for row in rows if row[6] != "20241119"]
    assert images.pick_from_releases_table(older, "eu-west-1", "24.04", "amd64") == (
        "ami-0123456789abcdef0", "20240423")


def test_releases_table_pv_only_rejected():
    rows = images.parse_releases_table(RELEASES_TABLE)
    with pytest.raises(ImageError) as caught:
        images.pick_from_releases_table(rows, "sa-east-1", "22.04", "amd64")
    assert "pv-ssd" in str(caught.value)


def test_releases_table_skips_other_clouds():
    rows = images.parse_releases_table(RELEASES_TABLE)
    with pytest.raises(ImageError):
        images.pick_from_releases_table(rows, "us-gov-west-1", "24.04", "amd64")


def test_volume_type_per_release():
    assert images.ssm_parameter("24.04", "amd64") == (
        "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/"
        "ebs-gp3/ami-id")
    assert images.ssm_parameter("22.04", "arm64").endswith("/arm64/hvm/ebs-gp2/ami-id")


def aws_region(name="eu-west-1", size="t3.small", ami="", ubuntu="24.04"):
    return regions.Region(
        name=name, provider="aws", ubuntu=ubuntu, size=size, disk_gb=20,
        disk_alert_percent=80, roles=["base"], hostname=f"{name}.example.com",
        nginx_pin="", nginx_floor="1.11.9", is_primary=False,
        box_dir=Path("/nonexistent"), arch=regions.instance_arch("aws", size),
        key_pair="k", private_key="~/.ssh/k.pem", ami=ami,
    )


def test_cache_resolution_with_date(tmp_path):
    stamp = datetime(2024, 11, 20, 8, 30, tzinfo=UTC)
    images.store_catalogue(json.dumps(SAMPLE).encode(), "aws.json", tmp_path, stamp)
    image = images.resolve_ami(aws_region(), cache_dir=tmp_path, use_ssm=False)
    assert image.id == EU
    assert image.serial == "20241119.1"
    assert image.source == "catalogue aws.json"
    assert image.date == "2024-11-20T08:30:00Z"


def test_cache_releases_table(tmp_path):
    (tmp_path / "releasesTable").write_text(RELEASES_TABLE)
    image = images.resolve_ami(aws_region(), cache_dir=tmp_path, use_ssm=False)
    assert image.id == "ami-abcdef01"
    assert image.source == "catalogue releasesTable"


def test_import_catalogue(tmp_path):
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(SAMPLE))
    cache = tmp_path / "cache"
    path = images.import_catalogue(saved, cache)
    assert path == cache / "aws.json"
    assert (cache / "aws.json.date").exists()


def test_import_rejects_other_json(tmp_path):
    saved = tmp_path / "saved.json"
    saved.write_text('{"hello": 1}')
    with pytest.raises(ImageError):
        images.import_catalogue(saved, tmp_path / "cache")


def test_no_source_names_fixes(tmp_path):
    with pytest.raises(ImageError) as caught:
        images.resolve_ami(aws_region(), cache_dir=tmp_path, use_ssm=False)
    message = str(caught.value)
    assert "invoke ami --refresh" in message
    assert "--import" in message
    assert 'ami = "ami-..."' in message
    assert "[regions.eu-west-1]" in message


def test_pinned_ami_wins(tmp_path):
    image = images.resolve_ami(aws_region(ami="ami-0123abcd"), cache_dir=tmp_path,
                               use_ssm=False)
    assert image.id == "ami-0123abcd"
    assert image.source == "pinned in regions.toml"


@pytest.fixture
def httpserver_json():
    """Serve one body on a loopback port; yield a function that returns its URL."""
    import http.server
    import threading

    servers = []

    def serve(body: bytes) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/aws.json"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_refresh_downloads_from_url(tmp_path, httpserver_json):
    url = httpserver_json(json.dumps(SAMPLE).encode())
    path = images.refresh_catalogue(tmp_path, url)
    assert json.loads(path.read_text())["products"]
    image = images.from_cache("eu-west-1", "24.04", "amd64", tmp_path)
    assert image.id == EU


# ----- SSM through moto ---------------------------------------------------------


@pytest.fixture
def aws(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.session.Session()


def publish_parameter(region: str, name: str, value: str) -> None:
    """Publish a public parameter the way Canonical does under /aws/service/.

    PutParameter rejects names under /aws (they are reserved for AWS), in
    moto as in AWS, so the parameter goes into moto's backend directly.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    backend = ssm_backends[DEFAULT_ACCOUNT_ID][region]
    backend._parameters[name].append(Parameter(
        account_id=DEFAULT_ACCOUNT_ID, name=name, value=value,
        parameter_type="String", description=None, allowed_pattern=None,
        keyid=None, last_modified_date=datetime.now(tz=UTC), version=1,
        data_type="aws:ec2:image",
    ))


def canonical_image(session, region="eu-west-1") -> dict:
    ec2 = session.client("ec2", region_name=region)
    found = ec2.describe_images(Owners=[images.CANONICAL_OWNER])["Images"]
    assert found, "moto ships Canonical-owned AMIs"
    return found[0]


def test_ssm_resolves_and_checks_owner(aws):
    image = canonical_image(aws)
    publish_parameter("eu-west-1", images.ssm_parameter("24.04", "amd64"),
                      image["ImageId"])
    resolved = images.resolve_ami(aws_region(), session=aws)
    assert resolved.id == image["ImageId"]
    assert resolved.source == "ssm"
    assert resolved.serial == image["Name"].rsplit("-", 1)[-1]


def test_ssm_rejects_non_canonical_owner(aws):
    ec2 = aws.client("ec2", region_name="eu-west-1")
    instance = ec2.run_instances(ImageId=canonical_image(aws)["ImageId"],
                                 MinCount=1, MaxCount=1)["Instances"][0]
    forged = ec2.create_image(InstanceId=instance["InstanceId"], Name="lookalike")
    publish_parameter("eu-west-1", images.ssm_parameter("24.04", "amd64"),
                      forged["ImageId"])
    with pytest.raises(ImageError) as caught:
        images.resolve_ami(aws_region(), session=aws)
    assert "not Canonical (099720109477)" in str(caught.value)


def test_ssm_missing_parameter(aws):
    with pytest.raises(ImageError) as caught:
        images.resolve_ami(aws_region(), session=aws)
    assert "ParameterNotFound" in str(caught.value)


def test_ssm_architecture_mismatch(aws):
    image = canonical_image(aws)
    publish_parameter("eu-west-1", images.ssm_parameter("24.04", "arm64"),
                      image["ImageId"])
    with pytest.raises(ImageError) as caught:
        images.resolve_ami(aws_region(size="t4g.small"), session=aws)
    assert "needs arm64" in str(caught.value)


def test_pinned_ami_architecture_checked(aws):
    image = canonical_image(aws)
    region = aws_region(size="t4g.small", ami=image["ImageId"])
    with pytest.raises(ImageError) as caught:
        images.resolve_ami(region, session=aws)
    assert "instance type t4g.small needs arm64" in str(caught.value)
    assert "pin an arm64 image or change `size`" in str(caught.value)


def test_pinned_ami_matching_arch(aws):
    image = canonical_image(aws)
    resolved = images.resolve_ami(aws_region(ami=image["ImageId"]), session=aws)
    assert resolved.id == image["ImageId"]


def test_scaleway_image_per_zone():
    class Marketplace:
        def list_local_images(self, zone, label):
            assert label == "ubuntu_noble"
            return [
                {"id": f"{zone}-arm", "arch": "arm64", "zone": zone,
                 "compatible_commercial_types": ["AMP2-C1"], "label": label,
                 "type": "instance_sbs"},
                {"id": f"{zone}-x86", "arch": "x86_64", "zone": zone,
                 "compatible_commercial_types": ["DEV1-S"], "label": label,
                 "type": "instance_sbs"},
                {"id": "other-zone", "arch": "x86_64", "zone": "pl-waw-1",
                 "compatible_commercial_types": ["DEV1-S"], "label": label,
                 "type": "instance_sbs"},
            ]

    fleet = regions.load(REPO / "regions.toml")
    par = images.scaleway_image(fleet.regions["fr-par-1"], Marketplace())
    ams = images.scaleway_image(fleet.regions["nl-ams-1"], Marketplace())
    assert par.id == "fr-par-1-x86"
    assert ams.id == "nl-ams-1-x86"


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'"products"', "no 'products' table"),
    (b"[1, 2, 3]", "no 'products' table"),
])
def test_import_rejects_unusable_file(tmp_path, content, expected):
    saved = tmp_path / "saved.json"
    saved.write_bytes(content)
    with pytest.raises(ImageError) as caught:
        images.import_catalogue(saved, tmp_path / "cache")
    assert str(saved) in str(caught.value)
    assert expected in str(caught.value)
    assert not (tmp_path / "cache" / "aws.json").exists()


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfe", "not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[]", "not a JSON object"),
])
def test_corrupt_cache_names_refresh(tmp_path, content, expected):
    (tmp_path / "aws.json").write_bytes(content)
    with pytest.raises(ImageError) as caught:
        images.resolve_ami(aws_region(), cache_dir=tmp_path, use_ssm=False)
    assert expected in str(caught.value)
    assert "invoke ami --refresh" in str(caught.value)


def test_serial_with_newline_skipped():
    data = json.loads(json.dumps(SAMPLE))
    product = data["products"]["com.ubuntu.cloud:server:24.04:amd64"]
    versions = product["versions"]
    newest = max(versions)
    versions[newest + "\n"] = versions.pop(newest)
    _image_id, serial = images.pick_from_simplestreams(
        data, "eu-west-1", "24.04", "amd64")
    assert "\n" not in serial
    assert serial != newest
