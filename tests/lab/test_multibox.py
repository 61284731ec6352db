"""Rehearse a box failure on the multi-box lab, end to end.

Builds the three boxes of lab/multibox.toml with the real pipeline (Docker
engine, Vagrant, provisioning over SSH), starts the delaying proxies and
the lab resolver, then stops one region's box and starts it again:

- all green: `invoke monitor` exits 0, `invoke nightly` writes a green page;
- one box stopped: the monitor flags it and exits 1, the nightly page turns
  red for that region only, the resolver stops answering with it and the
  other boxes keep serving;
- box started again: it pulls from the primary, turns ready, the monitor
  and the resolver take it back.

The boxes are destroyed after the test unless VATFLEET_KEEP_LAB=1 is set,
which lets a second run reuse them (`invoke build` is idempotent).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from app.auth import generate_key, new_user_documents
from fleet import labnet, multilab, regions

pytestmark = [pytest.mark.slow, pytest.mark.lab, pytest.mark.timeout(5400)]

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "lab" / "multibox.toml"
INVOKE = REPO / ".venv" / "bin" / "invoke"
STOPPED = "lab-west"
GERMANY = "85.214.132.117"  # an address geolocated in Germany


def invoke(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INVOKE), *args], cwd=REPO, capture_output=True, text=True, check=False,
        timeout=timeout,
    )


def must(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_until(condition, seconds: float, pause: float = 1.0):
    """Poll `condition` until it returns a truthy value or time runs out."""
    deadline = time.monotonic() + seconds
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(pause)
    return value


def monitor_json(*extra: str) -> tuple[int, dict]:
    done = invoke("monitor", "--config", str(CONFIG), "--json", "--timeout", "8",
                  *extra, timeout=120)
    assert done.stdout.strip(), f"monitor printed no JSON:\n{done.stderr}"
    return done.returncode, json.loads(done.stdout)


def healthy_by_region(payload: dict) -> dict[str, bool]:
    return {box["region"]: box["healthy"] for box in payload["boxes"]}


def resolve(spec: dict) -> list[str]:
    try:
        return labnet.query(labnet.split_address(spec["dns"]), spec["domain"])
    except OSError:
        return []


def get(front: str, path: str, domain: str) -> httpx.Response:
    host, port = labnet.split_address(front)
    with httpx.Client(verify=False, timeout=10, trust_env=False) as client:
        return client.get(
            f"https://{host}:{port}{path}",
            headers={"Host": domain},
            extensions={"sni_hostname": domain},
        )


def status_of(front: str, path: str, domain: str) -> int | None:
    try:
        return get(front, path, domain).status_code
    except httpx.HTTPError:
        return None


def write_user_to_primary(fleet) -> str:
    """Create a user and API key on the primary's database; return the key."""
    primary = fleet.regions[fleet.project.primary]
    url = urlsplit(multilab.primary_url_over_ssh(primary) or "")
    address = multilab.container_address(fleet, primary)
    assert url.password and address, "cannot reach the primary's database"
    key, docs = new_user_documents("sync-check@vatrates.test", "free")
    response = httpx.post(
        f"http://{address}:5984{url.path}/_bulk_docs",
        json={"docs": docs},
        auth=(url.username, unquote(url.password)),
        timeout=10,
        trust_env=False,
    )
    assert response.status_code == 201, response.text
    return key


def status_with_key(front: str, domain: str, key: str) -> int | None:
    host, port = labnet.split_address(front)
    with httpx.Client(verify=False, timeout=10, trust_env=False) as client:
        try:
            return client.get(
                f"https://{host}:{port}/v1/rates?ip={GERMANY}",
                headers={"Host": domain, "Authorization": f"Bearer {key}"},
                extensions={"sni_hostname": domain},
            ).status_code
        except httpx.HTTPError:
            return None


def nightly_page(reports: Path, endpoints: Path) -> tuple[int, str]:
    done = invoke("nightly", "--config", str(CONFIG), "--reports", str(reports),
                  "--endpoints", str(endpoints), timeout=1800)
    page = reports / "nightly" / "index.html"
    return done.returncode, page.read_text() if page.exists() else done.stderr


@pytest.fixture(scope="module")
def lab():
    """Build the boxes, start the lab network; stop the network afterwards."""
    fleet = regions.load(CONFIG)
    must(invoke("build", "--config", str(CONFIG), "--region", "all",
                timeout=4800))
    multilab.down()
    spec = multilab.up(fleet)
    try:
        # Provision and deploy the regions again, so that their database URLs
        # point at the delayed links that multilab-up wrote. One region at a
        # time: both read the primary's settings through Vagrant, which
        # rejects a second command on a machine while one is running.
        for region in ("lab-west", "lab-east"):
            for task in ("provision", "deploy"):
                must(invoke(task, "--config", str(CONFIG), "--region", region,
                            timeout=900))
        yield fleet, spec
    finally:
        multilab.down()
        if os.environ.get("VATFLEET_KEEP_LAB") == "1":
            # Leave the stopped box running again, even after a failure midway.
            subprocess.run(["docker", "start", multilab.container_id(
                fleet, fleet.regions[STOPPED])], capture_output=True, timeout=120,
                check=False)
        else:
            must(invoke("destroy", "--config", str(CONFIG), "--region", "all",
                        "--yes", timeout=600))


def test_failover_and_return(lab):
    fleet, spec = lab
    domain = fleet.project.domain
    fronts = labnet.front_endpoints(spec)
    endpoints = multilab.STATE_DIR / "endpoints.json"
    container = multilab.container_id(fleet, fleet.regions[STOPPED])
    reports = REPO / "reports"  # where the infra step writes its JUnit files

    # All green.
    all_ready = wait_until(
        lambda: all(status_of(f, "/readyz", domain) == 200 for f in fronts.values()),
        180,
    )
    assert all_ready, "not every box turned ready through its front proxy"
    code, payload = monitor_json()
    assert code == 0, payload
    assert all(healthy_by_region(payload).values())
    code, page = nightly_page(reports, endpoints)
    assert code == 0, page
    assert "all regions green" in page
    assert page.count('class="green" data-region=') == 3
    stopped_address = fronts[STOPPED].split(":")[0]
    nearest = wait_until(lambda: resolve(spec) == [stopped_address], 30)
    assert nearest, f"resolver answered {resolve(spec)}, expected {stopped_address}"
    rates = get(fronts[STOPPED], f"/v1/rates?ip={GERMANY}", domain)
    assert rates.status_code == 200, rates.text

    # One box stopped.
    must_run(["docker", "stop", "-t", "5", container])
    code, payload = monitor_json()
    health = healthy_by_region(payload)
    assert code == 1
    assert health[STOPPED] is False
    assert health["lab-primary"] is True
    assert health["lab-east"] is True
    code, page = nightly_page(reports, endpoints)
    assert code == 1
    assert f'class="red" data-region="{STOPPED}"' in page
    assert 'class="green" data-region="lab-primary"' in page
    assert 'class="green" data-region="lab-east"' in page
    moved = wait_until(
        lambda: resolve(spec) not in ([], [stopped_address]), 30
    )
    assert moved, f"resolver still answers {resolve(spec)} with the stopped box"
    answer = resolve(spec)[0]
    # The next nearest box by the lab's delays is the primary.
    assert answer == fronts["lab-primary"].split(":")[0]
    for region in ("lab-primary", "lab-east"):
        assert status_of(fronts[region], f"/v1/rates?ip={GERMANY}", domain) == 200
    # A user signs up while the box is down; the running regions pull it.
    key = write_user_to_primary(fleet)
    east_knows = wait_until(
        lambda: status_with_key(fronts["lab-east"], domain, key) == 200, 60
    )
    assert east_knows, "lab-east did not pull the new API key from the primary"

    # The box started again.
    must_run(["docker", "start", container])
    ready = wait_until(lambda: status_of(fronts[STOPPED], "/readyz", domain) == 200,
                       300, pause=2)
    assert ready, f"{STOPPED} did not turn ready after docker start"
    body = get(fronts[STOPPED], "/readyz", domain).json()
    assert body["ready"] is True
    # It pulled what the primary got while it was down, and only that.
    assert status_with_key(fronts[STOPPED], domain, key) == 200
    assert status_with_key(fronts[STOPPED], domain, generate_key()) == 401
    code, payload = monitor_json()
    assert code == 0, payload
    back = wait_until(lambda: resolve(spec) == [stopped_address], 30)
    assert back, f"resolver answers {resolve(spec)}, not {STOPPED} again"
    code, page = nightly_page(reports, endpoints)
    assert code == 0, page
    history = json.loads((reports / "nightly" / "history.json").read_text())
    assert [run["green"] for run in history[-3:]] == [True, False, True]


def must_run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
