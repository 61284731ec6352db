"""Measure the sync layer against PouchDB and the raw `_changes` floor.

Seeds 50,000 user documents in an in-memory PouchDB Server on 127.0.0.1,
then in one run measures:

(a) our cold pull into a memory replica until ready (in a child process, so
    its peak memory is its own),
(b) PouchDB 9 on Node with the memory adapter replicating the same database
    with default settings (tests/peers/replicate.js),
(c) one plain `GET _changes?include_docs=true` read of it: the floor,

plus a warm SQLite restart after 100 new documents, and push throughput.
Writes the figures to the sync section of docs/benchmarks.md.

Usage: .venv/bin/python bench/sync_bench.py [--docs N] [--runs N] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "sync"))

from couch_peers import (
    POUCHDB_SERVER,
    PouchServer,
    peers_missing,
    pouchdb_replicate,
    user_docs,
)

from app.sync import SyncService, open_store

BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"
SECTION_START = "<!-- sync-bench:start -->"
SECTION_END = "<!-- sync-bench:end -->"
SEED_BATCH = 5_000
PUSH_DOCS = 5_000
READY_TIMEOUT = 600.0


# -- measurements


def seed(server: PouchServer, db: str, count: int) -> None:
    server.create_db(db)
    for start in range(0, count, SEED_BATCH):
        server.bulk_docs(db, user_docs(min(SEED_BATCH, count - start), start=start))


def floor_read(url: str) -> tuple[float, float]:
    """Time one `_changes?include_docs=true` read, then its JSON parse."""
    with httpx.Client(timeout=300) as client:
        started = time.perf_counter()
        body = client.get(f"{url}/_changes", params={"include_docs": "true"}).content
        read = time.perf_counter() - started
        started = time.perf_counter()
        rows = len(orjson.loads(body)["results"])
        parse = time.perf_counter() - started
    if rows == 0:
        raise RuntimeError(f"{url}/_changes returned no rows: seeding failed")
    return read, parse


async def _pull_until_ready(spec: str, url: str) -> dict:
    store = open_store(spec)
    service = SyncService(store, url, push=False)
    started = time.perf_counter()
    await service.start()
    ready = await service.wait_ready(READY_TIMEOUT)
    seconds = time.perf_counter() - started
    progress = service.progress()
    await service.stop()
    docs = store.doc_count
    store.close()
    if not ready:
        raise RuntimeError(f"pull of {url} not ready: {progress}")
    return {"seconds": seconds, "docs": docs, "docs_read": progress["docs_read"]}


def memory_status() -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of this process, in bytes.

    /proc/self/status is used rather than getrusage(): Linux carries
    ru_maxrss over from the parent across fork and exec, so a child would
    report the parent's peak.
    """
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def child_pull(spec: str, url: str) -> None:
    """Entry point of the child process: pull, print time and peak memory."""
    baseline = memory_status()["VmRSS"]
    result = asyncio.run(_pull_until_ready(spec, url))
    peak = memory_status()["VmHWM"]
    result["peak_rss_bytes"] = peak
    result["rss_growth_bytes"] = peak - baseline
    print(json.dumps(result))


def pull_in_child(spec: str, url: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child-pull", spec, url],
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT + 60,
        check=False,
        cwd=REPO,
    )
    if result.returncode != 0:
        raise RuntimeError(f"child pull failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


async def push_throughput(url: str, count: int) -> float:
    """Write `count` local docs on a ready replica; return docs/s to primary."""
    store = open_store("memory")
    service = SyncService(store, url, push=True, push_interval=60)
    await service.start()
    if not await service.wait_ready(READY_TIMEOUT):
        raise RuntimeError(f"replica of {url} not ready: {service.progress()}")
    started = time.perf_counter()
    for number in range(count):
        store.put({"_id": f"usage:{number}:bench:2026-12-04", "requests": number})
    await service.push_now(READY_TIMEOUT)
    seconds = time.perf_counter() - started
    await service.stop()
    return count / seconds


# -- report


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    server_package = POUCHDB_SERVER.resolve().parents[1] / "package.json"
    server_version = json.loads(server_package.read_text())["version"]
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "node": node,
        "pouchdb_server": server_version,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": f"{os.getloadavg()[0]:.1f}",
    }


def render(results: dict, info: dict[str, str], docs: int, runs: int) -> str:
    ours, pouch, floor = results["ours"], results["pouchdb"], results["floor"]
    ratio_pouch = ours / pouch
    ratio_floor = ours / floor

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    mib = results["rss_growth_bytes"] / 2**20
    peak_mib = results["peak_rss_bytes"] / 2**20
    lines = [
        SECTION_START,
        "## Sync: cold pull, warm restart, push",
        "",
        textwrap.fill(
            f"Measured by `bench/sync_bench.py` on {info['date']}: {info['cpu']}, "
            f"{info['cores']} cores, Python {info['python']}, Node {info['node']}, "
            f"PouchDB Server {info['pouchdb_server']} (in memory) on 127.0.0.1, "
            f"{docs:,} user documents, 1-minute load average {info['load']} at "
            f"the end. (a), (b), (c) and the memory figure are medians of {runs} "
            "runs, interleaved; the other rows are single runs.",
            width=72,
        ),
        "",
        "| Measurement | Result | Target |",
        "|---|---|---|",
        f"| (a) our cold pull into memory until ready | {ours:.2f} s | |",
        f"| (b) PouchDB 9, memory adapter, default settings | {pouch:.2f} s | |",
        (
            f"| (c) one `_changes?include_docs=true` read (floor) | {floor:.2f} s "
            f"(+{results['floor_parse']:.2f} s JSON parse) | |"
        ),
        f"| (a) / (b) | {ratio_pouch:.2f} | <= 0.33: {verdict(ratio_pouch <= 1 / 3)} |",
        f"| (a) / (c) | {ratio_floor:.2f} | <= 2: {verdict(ratio_floor <= 2)} |",
        f"| cold pull into SQLite until ready | {results['sqlite_cold']:.2f} s | |",
        (
            f"| warm SQLite restart after 100 new docs | "
            f"{results['sqlite_warm']:.3f} s | < 1 s: "
            f"{verdict(results['sqlite_warm'] < 1)} |"
        ),
        (
            f"| peak memory growth of a cold pull (RSS) | {mib:.0f} MiB per "
            f"{docs:,} docs (peak RSS {peak_mib:.0f} MiB) | |"
        ),
        (
            f"| push of {PUSH_DOCS:,} local edits to the primary | "
            f"{results['push_rate']:,.0f} docs/s | |"
        ),
        "",
        "(a) runs in a child process from `SyncService.start()` until `ready`;",
        "the memory row is that process's peak RSS minus its RSS before the",
        "pull. (b) is PouchDB's own timing of `PouchDB.replicate()`, without",
        "Node's start-up. (c) reads the body once with httpx, without parsing.",
        SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def write_section(section: str) -> None:
    if BENCHMARKS_MD.exists():
        text = BENCHMARKS_MD.read_text()
    else:
        text = "# Benchmarks\n\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        _, tail = rest.split(SECTION_END, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCHMARKS_MD.write_text(text)


# -- main


def run_benchmark(docs: int, runs: int) -> dict:
    server = PouchServer().start()
    try:
        seed(server, "users", docs)
        url = server.url("users")
        print(f"seeded {docs} docs at {url}", file=sys.stderr)

        # Interleaved, so that a change in machine load hits all three.
        floor_runs, ours_runs, pouch_runs = [], [], []
        for run in range(1, runs + 1):
            print(f"run {run} of {runs}", file=sys.stderr)
            floor_runs.append(floor_read(url))
            ours = pull_in_child("memory", url)
            if ours["docs"] != docs:
                raise RuntimeError(f"pull stored {ours['docs']} of {docs} docs")
            ours_runs.append(ours)
            pouch = pouchdb_replicate(url, dump=False)
            if pouch["docs_written"] != docs:
                raise RuntimeError(f"PouchDB wrote {pouch['docs_written']} docs")
            pouch_runs.append(pouch)

        with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
            spec = f"sqlite:{tmp}/replica.db"
            sqlite_cold = pull_in_child(spec, url)
            server.bulk_docs("users", user_docs(100, start=docs))
            sqlite_warm = pull_in_child(spec, url)
            if sqlite_warm["docs_read"] != 100:
                raise RuntimeError(f"warm restart read {sqlite_warm['docs_read']}")

        server.create_db("pushed")
        push_rate = asyncio.run(push_throughput(server.url("pushed"), PUSH_DOCS))
    finally:
        server.close()

    return {
        "ours": statistics.median(r["seconds"] for r in ours_runs),
        "pouchdb": statistics.median(r["seconds"] for r in pouch_runs),
        "floor": statistics.median(read for read, _ in floor_runs),
        "floor_parse": statistics.median(parse for _, parse in floor_runs),
        "rss_growth_bytes": statistics.median(r["rss_growth_bytes"] for r in ours_runs),
        "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in ours_runs),
        "sqlite_cold": sqlite_cold["seconds"],
        "sqlite_warm": sqlite_warm["seconds"],
        "push_rate": push_rate,
        "raw": {"ours": ours_runs, "pouchdb": pouch_runs, "floor": floor_runs},
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child-pull":
        child_pull(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=50_000, help="documents seeded")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement")
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave docs/ alone"
    )
    options = parser.parse_args()
    reason = peers_missing()
    if reason:
        sys.exit(f"sync_bench: {reason}")

    results = run_benchmark(options.docs, options.runs)
    section = render(results, machine(), options.docs, options.runs)
    print(json.dumps(results["raw"], indent=1), file=sys.stderr)
    print(section)
    if not options.no_write:
        write_section(section)
        print(f"wrote the sync section of {BENCHMARKS_MD}", file=sys.stderr)


if __name__ == "__main__":
    main()
