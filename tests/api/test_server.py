"""The API as deployed: uvicorn processes, a shared Redis, a shared replica."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from app.auth import new_user_documents
from app.sync import open_store

from .servers import REPO, redis_server, uvicorn_server

pytestmark = [pytest.mark.slow, pytest.mark.redis]

BURST = 25
REQUESTS = 400


def _plans(tmp_path, anonymous_burst: int) -> str:
    path = tmp_path / "plans.json"
    path.write_text(
        json.dumps(
            {
                "anonymous": {"requests_per_minute": 1, "burst": anonymous_burst},
                "free": {"requests_per_minute": 1, "burst": BURST},
            }
        )
    )
    return str(path)


async def _hammer(url: str, params: dict, count: int) -> collections.Counter:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def one() -> int:
            response = await client.get(url, params=params)
            return response.status_code

        statuses = await asyncio.gather(*(one() for _ in range(count)))
    return collections.Counter(statuses)


def _worker_pids(log: str) -> set[str]:
    return set(re.findall(r"pid=(\d+) logger=app.request event=request ", log))


def test_limit_holds_across_two_workers(tmp_path):
    replica = tmp_path / "users.sqlite"
    store = open_store(f"sqlite:{replica}")
    key, docs = new_user_documents("load@example.com", "free")
    user_id = docs[0]["_id"].removeprefix("user:")
    for doc in docs:
        store.put(doc)

    with redis_server() as redis_url:
        env = {
            "REDIS_URL": redis_url,
            "REPLICA": f"sqlite:{replica}",
            "PLANS_FILE": _plans(tmp_path, anonymous_burst=BURST),
            "REGION": "test",
        }
        with uvicorn_server(
            "app.main:app", env, tmp_path / "server.log", workers=2
        ) as server:
            by_user = asyncio.run(
                _hammer(server.url + "/v1/rates/DE", {"key": key}, REQUESTS)
            )
            anonymous = asyncio.run(_hammer(server.url + "/v1/countries", {}, REQUESTS))
        # Read after the stop: the app writes its log lines in batches and
        # flushes the rest at exit.
        final_log = server.log()

    assert by_user == {200: BURST, 429: REQUESTS - BURST}
    assert anonymous == {200: BURST, 429: REQUESTS - BURST}
    assert len(_worker_pids(final_log)) == 2

    # Both workers flushed their usage counts on stop into the shared replica.
    assert final_log.count("event=stop ") == 2
    day = time.strftime("%Y-%m-%d", time.gmtime())
    usage = open_store(f"sqlite:{replica}").get(f"usage:{user_id}:test:{day}")
    assert usage["requests"] == REQUESTS
    assert usage["by_status"] == {"2xx": BURST, "4xx": REQUESTS - BURST}


def test_server_rejects_huge_headers(tmp_path):
    with redis_server() as redis_url:
        env = {"REDIS_URL": redis_url, "PLANS_FILE": _plans(tmp_path, 1000)}
        with uvicorn_server("app.main:app", env, tmp_path / "server.log") as server:
            statuses = [
                httpx.get(
                    server.url + "/v1/countries",
                    headers={"X-Pad": "a" * size},
                    timeout=10,
                ).status_code
                for size in (9_000, 60_000)
            ]
        log = server.log()
    assert statuses == [431, 431]
    assert "Traceback" not in log


def test_fuzzer_finds_no_server_error(tmp_path):
    """Run schemathesis against the served OpenAPI document.

    Every check runs except positive_data_acceptance: the document cannot
    express "a public IP address", so schema-valid private addresses are
    rightly rejected with 400.
    """
    with redis_server() as redis_url:
        env = {"REDIS_URL": redis_url, "PLANS_FILE": _plans(tmp_path, 1_000_000)}
        with uvicorn_server("app.main:app", env, tmp_path / "server.log") as server:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "schemathesis.cli",
                    "run",
                    server.url + "/openapi.json",
                    "--checks",
                    "all",
                    "--exclude-checks",
                    "positive_data_acceptance",
                    "--max-examples",
                    "200",
                    "--seed",
                    "1",
                ],
                capture_output=True,
                check=False,
                text=True,
                timeout=600,
            )
        log = server.log()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " status=5" not in log
    assert "Traceback" not in log


def test_bad_redis_url_stops_start_with_one_line(tmp_path):
    """A bad REDIS_URL exits 1 with one log line and no traceback or password."""
    env = {
        **os.environ,
        "REDIS_URL": "rediss://user:hunter2@127.0.0.1:1/0",
        "PYTHONPATH": str(REPO),
    }
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"]
    argv += ["--host", "127.0.0.1", "--no-proxy-headers"]
    result = subprocess.run(
        argv, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "event=start_failed" in lines[0]
    assert "REDIS_URL='rediss://user:***@127.0.0.1:1/0'" in lines[0]
    assert "unix://" in lines[0]
