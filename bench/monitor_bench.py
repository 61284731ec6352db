"""Measure how the monitor's run time grows with the number of boxes.

Starts N HTTPS boxes on 127.0.0.1 (self-made certificate for the shared
name), each behind a delaying proxy with `--delay` ms each way to stand in
for a distant region. Then, in one run, it times checking 1, 3 and 6 boxes
with `fleet.monitor.run` (all at once) side by side with checking the
same boxes one after another. Disk checks are off (no ssh-config), so the
figures cover TLS, the certificate and `/readyz`.

Writes the figures to the monitor section of docs/benchmarks.md.

Usage: .venv/bin/python bench/monitor_bench.py [--delay MS] [--runs N]
       [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "unit"))

from tls_boxes import Box, make_cert

from fleet import monitor
from fleet.labnet import DelayProxy

BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"
SECTION_START = "<!-- monitor-bench:start -->"
SECTION_END = "<!-- monitor-bench:end -->"
SHARED = "api.vatrates.test"
COUNTS = (1, 3, 6)


class ProxyThread:
    """Run delaying proxies in an event loop of their own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxies: list[DelayProxy] = []

    def add(self, upstream_port: int, delay_ms: float) -> tuple[str, int]:
        proxy = DelayProxy(
            "bench",
            ("127.0.0.1", 0),
            ("127.0.0.1", upstream_port),
            up_ms=delay_ms,
            down_ms=delay_ms,
        )
        asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(10)
        self.proxies.append(proxy)
        return proxy.listen

    def close(self) -> None:
        for proxy in self.proxies:
            asyncio.run_coroutine_threadsafe(proxy.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def time_parallel(targets: list[monitor.Target]) -> float:
    started = time.perf_counter()
    results = monitor.run(targets, timeout=10)
    elapsed = time.perf_counter() - started
    assert all(r.healthy for r in results), [r.problems for r in results]
    return elapsed


def time_serial(targets: list[monitor.Target]) -> float:
    started = time.perf_counter()
    for target in targets:
        results = monitor.run([target], timeout=10)
        assert results[0].healthy, results[0].problems
    return time.perf_counter() - started


def measure(delay_ms: float, runs: int) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as folder:
        cert = make_cert(Path(folder), [SHARED], days=60)
        boxes = [Box(cert) for _ in range(max(COUNTS))]
        proxies = ProxyThread()
        try:
            fronts = [proxies.add(box.port, delay_ms) for box in boxes]
            targets = [
                monitor.Target(f"box{i}", host, port, SHARED)
                for i, (host, port) in enumerate(fronts)
            ]
            rows = []
            for count in COUNTS:
                chosen = targets[:count]
                parallel = [time_parallel(chosen) for _ in range(runs)]
                serial = [time_serial(chosen) for _ in range(runs)]
                rows.append(
                    {
                        "boxes": count,
                        "parallel": statistics.median(parallel),
                        "serial": statistics.median(serial),
                    }
                )
        finally:
            proxies.close()
            for box in boxes:
                box.close()
    return rows


def render(rows: list[dict[str, float]], delay_ms: float, runs: int) -> str:
    lines = [
        SECTION_START,
        "## Monitor: boxes checked at once vs one after another",
        "",
        (
            f"`bench/monitor_bench.py --delay {delay_ms:g} --runs {runs}`, "
            f"{dt.date.today().isoformat()}, {platform.machine()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}. Each box "
            f"is an HTTPS server on 127.0.0.1 behind a proxy adding {delay_ms:g} ms "
            "each way. Median seconds of the runs."
        ),
        "",
        "| boxes | all at once (`invoke monitor`) | one after another |",
        "|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['boxes']} | {row['parallel']:.2f} s | {row['serial']:.2f} s |"
        )
    lines += [SECTION_END, ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    current = (
        BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ("# Benchmarks\n\n")
    )
    if SECTION_START in current and SECTION_END in current:
        head, rest = current.split(SECTION_START, 1)
        tail = rest.split(SECTION_END, 1)[1].lstrip("\n")
        current = head + text + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text
    BENCHMARKS_MD.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--delay",
        type=float,
        default=100.0,
        help="added delay per direction, in ms (default: 100)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="runs per case; the median is kept (default: 3)",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the table without writing docs/benchmarks.md",
    )
    options = parser.parse_args()

    text = render(measure(options.delay, options.runs), options.delay, options.runs)
    print(text)
    if not options.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
