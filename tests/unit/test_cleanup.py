"""The box cleanup script (provision/files/vatfleet-cleanup) and its keep-list.

The real script runs against a fake `docker` that serves a fixed set of
containers and images and records every call, with fake apt-get, journalctl
and dokku beside it, so the test sees exactly what the script would remove.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "provision" / "files" / "vatfleet-cleanup"
NOW = datetime.now(UTC)


def iso(age: timedelta) -> str:
    return (NOW - age).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def listed(age: timedelta) -> str:
    # `docker image ls` prints CreatedAt like "2024-05-01 10:00:00 +0000 UTC".
    return (NOW - age).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def image_id(name: str) -> str:
    return "sha256:" + name.encode().hex().ljust(64, "0")[:64]


DAYS = timedelta(days=3)
HOURS = timedelta(hours=2)

CONTAINERS = [
    # id, name, status, finished, dokku app label, image
    ("c-old", "/old-job", "exited", iso(DAYS), "", image_id("job")),
    ("c-app", "/vatrates.web.1", "exited", iso(DAYS), "vatrates", image_id("release1")),
    ("c-redis", "/dokku.redis.vatrates-redis", "exited", iso(DAYS), "",
     image_id("redis7")),
    ("c-recent", "/recent-job", "exited", iso(HOURS), "", image_id("recent")),
    ("c-live", "/vatrates.web.2", "running", "0001-01-01T00:00:00Z", "vatrates",
     image_id("release2")),
]

IMAGES = [
    # id, "repository:tag", created, dangling
    (image_id("stale"), "<none>:<none>", listed(DAYS), True),
    (image_id("release1"), "<none>:<none>", listed(DAYS), True),
    (image_id("young"), "<none>:<none>", listed(HOURS), True),
    (image_id("release2"), "dokku/vatrates:latest", listed(DAYS), False),
    (image_id("redis7"), "redis:7.2", listed(DAYS), False),
]

FAKE_DOCKER = textwrap.dedent('''\
    #!/usr/bin/env python3
    """Answer the docker commands vatfleet-cleanup runs from fixture.json."""
    import json, os, sys

    here = os.path.dirname(os.path.abspath(__file__))
    data = json.load(open(os.path.join(here, "fixture.json")))
    args = sys.argv[1:]
    with open(os.path.join(here, "calls.log"), "a") as log:
        log.write("docker " + " ".join(args) + "\\n")

    if data.get("down"):
        sys.exit(1)
    if args[0] == "info":
        sys.exit(0)
    if args[:2] == ["ps", "-a"]:
        rows = data["containers"]
        if "status=exited" in args:
            rows = [r for r in rows if r[2] == "exited"]
        print("\\n".join(r[0] for r in rows))
    elif args[0] == "inspect":
        fmt, ids = args[2], args[3:]
        rows = {r[0]: r for r in data["containers"]}
        for cid in ids:
            c = rows[cid]
            if fmt == "{{.Image}}":
                print(c[5])
            else:
                print("|".join([c[0], c[2], c[3], c[1], c[4] or "<no value>"]))
    elif args[:2] == ["image", "ls"]:
        rows = data["images"]
        if "dangling=true" in args:
            rows = [r for r in rows if r[3]]
        for r in rows:
            print("|".join(r[:3]))
    elif args[0] in ("rm", "rmi"):
        pass
    else:
        sys.exit("fake docker: unexpected command " + " ".join(args))
''')


def fake_tool(name: str) -> str:
    return f'#!/bin/sh\necho "{name} $*" >>"$(dirname "$0")/calls.log"\n'


def make_fakes(bin_dir: Path) -> Path:
    """Fill a bin folder with fake docker, apt-get, journalctl and dokku."""
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    for name in ("apt-get", "journalctl"):
        (bin_dir / name).write_text(fake_tool(name))
    # Dokku's CLI fails on a full disk; the script must not depend on it.
    (bin_dir / "dokku").write_text(
        '#!/bin/sh\necho "dokku $*" >>"$(dirname "$0")/calls.log"\n'
        'echo "No space left on device" >&2\nexit 1\n')
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    write_fixture(bin_dir)
    return bin_dir


@pytest.fixture
def fakes(tmp_path: Path) -> Path:
    return make_fakes(tmp_path / "bin")


# One run serves every check that only reads its outcome, because each run
# of the script costs a second or two of fake docker calls.
@pytest.fixture(scope="module")
def cleanup_run(tmp_path_factory):
    return run_cleanup(make_fakes(tmp_path_factory.mktemp("run") / "bin"))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    return run_cleanup(make_fakes(tmp_path_factory.mktemp("dry") / "bin"), "--dry-run")


def write_fixture(bin_dir: Path, down: bool = False) -> None:
    fixture = {"containers": CONTAINERS, "images": IMAGES, "down": down}
    (bin_dir / "fixture.json").write_text(json.dumps(fixture))


def run_cleanup(bin_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                    list[str]]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "DOCKER": str(bin_dir / "docker")}
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    calls_file = bin_dir / "calls.log"
    calls = calls_file.read_text().splitlines() if calls_file.exists() else []
    return result, calls


def removals(calls: list[str]) -> set[str]:
    return {line.split()[-1] for line in calls
            if line.startswith(("docker rm ", "docker rmi "))}


def test_removes_only_old_unneeded_things(cleanup_run):
    result, calls = cleanup_run
    assert result.returncode == 0, result.stderr
    assert removals(calls) == {"c-old", image_id("stale")}


def test_keeps_dokku_containers(cleanup_run):
    result, calls = cleanup_run
    removed = removals(calls)
    assert "c-app" not in removed
    assert "c-redis" not in removed
    assert "keeping container vatrates.web.1" in result.stdout
    assert "keeping container dokku.redis.vatrates-redis" in result.stdout


def test_keeps_images_containers_use(cleanup_run):
    result, calls = cleanup_run
    # release1 is dangling and old, but a stopped Dokku container runs from it.
    assert image_id("release1") not in removals(calls)
    assert f"keeping image {image_id('release1')[7:19]}" in result.stdout


def test_keeps_recent_things(cleanup_run):
    _, calls = cleanup_run
    assert "c-recent" not in removals(calls)
    assert image_id("young") not in removals(calls)


def test_never_prunes_or_forces(cleanup_run):
    _, calls = cleanup_run
    docker_calls = [c for c in calls if c.startswith("docker ")]
    assert not [c for c in docker_calls if "prune" in c]
    assert not [c for c in docker_calls if "--force" in c or " -f " in c]


def test_frees_space_before_writing(cleanup_run):
    _, calls = cleanup_run
    last_removal = max(i for i, c in enumerate(calls)
                       if c.startswith(("docker rm ", "docker rmi ")))
    autoremove = calls.index("apt-get autoremove -y -q --purge")
    assert calls.index("apt-get clean") > last_removal
    assert autoremove > calls.index("apt-get clean")


def test_works_without_dokku_cli(cleanup_run):
    result, calls = cleanup_run
    assert result.returncode == 0
    assert not [c for c in calls if c.startswith("dokku ")]


def test_dry_run_changes_nothing(dry_run):
    result, calls = dry_run
    assert result.returncode == 0, result.stderr
    assert removals(calls) == set()
    assert not [c for c in calls if c.startswith("apt-get")]
    assert "would remove container old-job" in result.stdout
    assert f"would remove image {image_id('stale')[7:19]}" in result.stdout
    assert "cleanup: done" in result.stdout


def test_docker_down_still_cleans_apt(fakes):
    write_fixture(fakes, down=True)
    result, calls = run_cleanup(fakes)
    assert result.returncode == 0, result.stderr
    assert "docker is not running" in result.stdout
    assert "apt-get autoremove -y -q --purge" in calls


def test_rejects_unknown_option(fakes):
    result, _ = run_cleanup(fakes, "--all")
    assert result.returncode == 2
    assert "usage: vatfleet-cleanup" in result.stderr
