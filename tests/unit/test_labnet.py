"""Delaying proxy and lab resolver, on loopback servers the tests start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from dnslib import QTYPE, RCODE, DNSRecord
from tls_boxes import Box, make_cert

from fleet import labnet
from fleet.labnet import Candidate, DelayProxy, LabResolver

SHARED = "api.vatrates.test"
REPO = Path(__file__).resolve().parents[2]


async def start_echo(arrivals: list[float]) -> asyncio.Server:
    async def echo(reader, writer):
        while data := await reader.read(65536):
            arrivals.append(time.monotonic())
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def port_of(server: asyncio.Server) -> int:
    return server.sockets[0].getsockname()[1]


def test_proxy_delays_each_direction():
    async def scenario():
        arrivals: list[float] = []
        echo = await start_echo(arrivals)
        proxy = DelayProxy("west", ("127.0.0.1", 0), ("127.0.0.1", port_of(echo)),
                           up_ms=150, down_ms=60)
        await proxy.start()
        reader, writer = await asyncio.open_connection(*proxy.listen)
        sent = time.monotonic()
        writer.write(b"ping")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readexactly(4), 5)
        received = time.monotonic()
        writer.close()
        await proxy.stop()
        echo.close()
        return reply, arrivals[0] - sent, received - arrivals[0]

    reply, up, down = asyncio.run(scenario())

    assert reply == b"ping"
    assert 0.15 <= up < 0.35
    assert 0.06 <= down < 0.25


def test_proxy_keeps_bandwidth_and_order():
    payload = os.urandom(2 * 1024 * 1024)

    async def scenario():
        echo = await start_echo([])
        proxy = DelayProxy("east", ("127.0.0.1", 0), ("127.0.0.1", port_of(echo)),
                           up_ms=100, down_ms=100)
        await proxy.start()
        reader, writer = await asyncio.open_connection(*proxy.listen)
        started = time.monotonic()

        async def send():
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.read(-1), 10)
        await sender
        elapsed = time.monotonic() - started
        writer.close()
        await proxy.stop()
        echo.close()
        return echoed, elapsed

    echoed, elapsed = asyncio.run(scenario())

    assert echoed == payload
    # Delay is added once per direction, not once per chunk.
    assert elapsed < 2.0


def test_proxy_closes_client_when_upstream_dead():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]

    async def scenario():
        proxy = DelayProxy("gone", ("127.0.0.1", 0), ("127.0.0.1", dead))
        await proxy.start()
        reader, writer = await asyncio.open_connection(*proxy.listen)
        data = await asyncio.wait_for(reader.read(10), 5)
        writer.close()
        await proxy.stop()
        return data

    assert asyncio.run(scenario()) == b""


def ask(server: tuple[str, int], name: str = SHARED) -> list[str]:
    return labnet.query(server, name, timeout=2.0)


async def wait_for_answer(server, expected: list[str], seconds: float = 10.0):
    """Poll the resolver until it answers `expected`; return the last answer."""
    deadline = time.monotonic() + seconds
    answer = None
    while time.monotonic() < deadline:
        try:
            answer = await asyncio.to_thread(ask, server)
        except OSError as error:  # no resolver listening yet, or no reply
            answer = error
        if answer == expected:
            return answer
        await asyncio.sleep(0.2)
    return answer


@pytest.fixture
def cert(tmp_path):
    return make_cert(tmp_path, [SHARED], days=60)


def test_resolver_answers_fastest_healthy_box(cert):
    near_box, far_box = Box(cert), Box(cert)

    async def scenario():
        near = DelayProxy("near", ("127.0.2.1", 0), ("127.0.0.1", near_box.port),
                          up_ms=5, down_ms=5)
        far = DelayProxy("far", ("127.0.2.2", 0), ("127.0.0.1", far_box.port),
                         up_ms=60, down_ms=60)
        for proxy in (near, far):
            await proxy.start()
        resolver = LabResolver(
            SHARED,
            [Candidate("far", *far.listen), Candidate("near", *near.listen)],
            interval=0.2, timeout=1.5, fall=2, rise=2,
        )
        server = await resolver.start(("127.0.0.1", 0))
        steps = {}
        try:
            steps["both up"] = await wait_for_answer(server, ["127.0.2.1"])
            near_box.ready = False
            steps["near not ready"] = await wait_for_answer(server, ["127.0.2.2"])
            near_box.ready = True
            steps["near ready again"] = await wait_for_answer(server, ["127.0.2.1"])
            near_box.close()
            steps["near stopped"] = await wait_for_answer(server, ["127.0.2.2"])
            steps["status"] = {c["name"]: c["healthy"] for c in resolver.status()}
        finally:
            await resolver.stop()
            for proxy in (near, far):
                await proxy.stop()
        return steps

    try:
        steps = asyncio.run(scenario())
    finally:
        far_box.close()

    assert steps["both up"] == ["127.0.2.1"]
    assert steps["near not ready"] == ["127.0.2.2"]
    assert steps["near ready again"] == ["127.0.2.1"]
    assert steps["near stopped"] == ["127.0.2.2"]
    assert steps["status"] == {"near": False, "far": True}


def test_resolver_refuses_other_names():
    resolver = LabResolver(SHARED, [Candidate("a", "127.0.2.1", 8443)])

    reply = DNSRecord.parse(resolver.answer(DNSRecord.question("example.org").pack()))

    assert reply.header.rcode == RCODE.REFUSED
    assert reply.rr == []


def test_resolver_answers_all_down_by_latency():
    slow = Candidate("slow", "127.0.2.1", 8443)
    fast = Candidate("fast", "127.0.2.2", 8443)
    slow.samples.append(90.0)
    fast.samples.append(20.0)
    resolver = LabResolver(SHARED, [slow, fast])

    reply = DNSRecord.parse(resolver.answer(DNSRecord.question(SHARED).pack()))

    assert [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A] == ["127.0.2.2"]


def test_resolver_ignores_garbage_packet():
    resolver = LabResolver(SHARED, [])

    assert resolver.answer(b"\x00\x01garbage") is None


def test_health_needs_consecutive_probes():
    resolver = LabResolver(SHARED, [], fall=2, rise=2)
    box = Candidate("a", "127.0.2.1", 8443)
    history = []
    for failures, successes in [(0, 1), (0, 2), (1, 0), (2, 0), (0, 1)]:
        box.failures, box.successes = failures, successes
        resolver._update_health(box)
        history.append(box.healthy)

    assert history == [False, True, True, False, False]


def test_split_address_rejects_missing_port():
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        labnet.split_address("127.0.0.1")


def test_labnet_process_serves_spec_and_stops(cert, tmp_path):
    box = Box(cert)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dns_port = probe.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.2.9", 0))
        proxy_port = probe.getsockname()[1]
    spec = {
        "domain": SHARED,
        "dns": f"127.0.0.1:{dns_port}",
        "lifetime": 60,
        "proxies": [
            {"name": "only", "listen": f"127.0.2.9:{proxy_port}",
             "upstream": f"127.0.0.1:{box.port}", "up_ms": 10, "down_ms": 10,
             "serve": True},
        ],
    }
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    status = tmp_path / "status.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "fleet.labnet", str(spec_path), "--status",
         str(status)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        healthy = False
        deadline = time.monotonic() + 15
        while not healthy and time.monotonic() < deadline:
            time.sleep(0.3)
            if status.exists() and status.read_text():
                healthy = json.loads(status.read_text())[0]["healthy"]
        answer = asyncio.run(wait_for_answer(("127.0.0.1", dns_port), ["127.0.2.9"]))
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        box.close()
    log = process.stderr.read()

    assert healthy is True
    assert answer == ["127.0.2.9"]
    assert code == 0
    assert "event=resolver_stopped" in log


def lab_fleet(tmp_path: Path) -> SimpleNamespace:
    def region(name, port, primary=False):
        return SimpleNamespace(name=name, https_port=port, is_primary=primary,
                               box_dir=tmp_path / "boxes" / name)

    regions = [region("lab-primary", 8541, True), region("lab-west", 8542),
               region("lab-east", 8543)]
    return SimpleNamespace(
        project=SimpleNamespace(domain=SHARED, primary="lab-primary"),
        regions={r.name: r for r in regions},
    )


def test_lab_spec_from_repository_files(tmp_path):
    net = labnet.read_net_config(REPO / "lab" / "labnet.toml")

    spec = labnet.lab_spec(lab_fleet(tmp_path), net, "172.17.0.1", "172.17.0.5")

    by_name = {p["name"]: p for p in spec["proxies"]}
    assert spec["domain"] == SHARED
    assert set(by_name) == {
        "lab-primary-front", "lab-west-front", "lab-east-front",
        "lab-west-to-primary", "lab-east-to-primary",
    }
    assert by_name["lab-west-front"]["upstream"] == "127.0.0.1:8542"
    assert by_name["lab-east-to-primary"]["upstream"] == "172.17.0.5:5984"
    assert by_name["lab-east-to-primary"]["listen"].startswith("172.17.0.1:")
    assert by_name["lab-east-to-primary"]["serve"] is False
    fronts = labnet.front_endpoints(spec)
    assert len(set(fronts.values())) == 3
    assert all(value.startswith("127.") for value in fronts.values())


def test_lab_spec_without_primary_has_no_links(tmp_path):
    net = labnet.read_net_config(REPO / "lab" / "labnet.toml")

    spec = labnet.lab_spec(lab_fleet(tmp_path), net, "172.17.0.1", None)

    assert all(p["serve"] for p in spec["proxies"])


def test_lab_spec_rejects_box_missing_from_net(tmp_path):
    net = {"dns": "127.0.0.1:5391", "front_port": 8443, "primary_db_port": 5984,
           "boxes": {}}

    with pytest.raises(ValueError, match=r"no \[boxes.lab-primary\] table"):
        labnet.lab_spec(lab_fleet(tmp_path), net, "172.17.0.1", None)


def test_net_config_missing_key_named(tmp_path):
    path = tmp_path / "labnet.toml"
    path.write_text('dns = "127.0.0.1:5391"\n')

    with pytest.raises(ValueError, match="missing key 'front_port'"):
        labnet.read_net_config(path)


def test_couchdb_overrides_point_at_links(tmp_path):
    from fleet import multilab

    fleet = lab_fleet(tmp_path)
    primary_dir = fleet.regions["lab-primary"].box_dir
    primary_dir.mkdir(parents=True)
    primary_url = "http://admin:s3cret@localhost:5984/users\n"
    (primary_dir / "couchdb_url").write_text(primary_url)
    net = labnet.read_net_config(REPO / "lab" / "labnet.toml")
    spec = labnet.lab_spec(fleet, net, "172.17.0.1", "172.17.0.5")

    written = multilab.write_couchdb_overrides(fleet, spec)

    west = (fleet.regions["lab-west"].box_dir / "couchdb_url").read_text().strip()
    assert len(written) == 2
    assert west == "http://admin:s3cret@172.17.0.1:15985/users"
    assert (written[0].stat().st_mode & 0o777) == 0o600


def test_couchdb_overrides_skipped_without_primary_url(tmp_path):
    from fleet import multilab

    fleet = lab_fleet(tmp_path)
    net = labnet.read_net_config(REPO / "lab" / "labnet.toml")
    spec = labnet.lab_spec(fleet, net, "172.17.0.1", "172.17.0.5")

    written = multilab.write_couchdb_overrides(fleet, spec)

    assert written == []
    assert not (fleet.regions["lab-west"].box_dir / "couchdb_url").exists()


def test_couchdb_overrides_removed_on_down(tmp_path):
    from fleet import multilab

    state = tmp_path / "state"
    state.mkdir()
    written = tmp_path / "boxes" / "lab-west" / "couchdb_url"
    written.parent.mkdir(parents=True)
    written.write_text("http://172.17.0.1:15985/users\n")
    (state / "overrides.json").write_text(json.dumps([str(written)]))

    running = multilab.down(state)

    assert running is False
    assert not written.exists()
    assert not (state / "overrides.json").exists()
