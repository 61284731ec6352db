"""Time a first and a second `invoke build --region local` in one run.

The first build starts from no box (the box image may already be cached);
the second finds everything done and should only check. The ratio of the
two is what matters, because the absolute times depend on the machine's
load and the Debian mirror. Writes a section of docs/benchmarks.md.

Run from the repository root after scripts/setup:

    .venv/bin/python bench/lab_build_bench.py [--no-write]

It destroys the `local` box before and after.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "docs" / "benchmarks.md"
INVOKE = REPO / ".venv" / "bin" / "invoke"
START, END = "<!-- lab-build-bench:start -->", "<!-- lab-build-bench:end -->"


def invoke(*args: str, timeout: float) -> float:
    """Run one invoke task in the repository; return its wall-clock seconds."""
    started = time.monotonic()
    result = subprocess.run(
        [str(INVOKE), *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"invoke {' '.join(args)} failed with exit code "
                 f"{result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return seconds


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}, load average "
            f"{os.getloadavg()[0]:.1f} at start")


def section(first: float, second: float, host: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        START,
        "## Lab: first and second `invoke build --region local`",
        "",
        (f"Measured by `bench/lab_build_bench.py` on {now}: {host}. The first "
        "build starts with no box and a cached box image; the second finds "
        "every step done."),
        "",
        "| Build | Seconds |",
        "|---|---|",
        f"| first (box, render, up, provision, deploy, test) | {first:.0f} |",
        f"| second (every step already done) | {second:.0f} |",
        f"| second / first | {second / first:.2f} |",
        END,
    ])


def write_section(text: str) -> None:
    current = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if START in current and END in current:
        before, rest = current.split(START, 1)
        updated = before + text + rest.split(END, 1)[1]
    else:
        updated = current.rstrip("\n") + "\n\n" + text + "\n"
    BENCHMARKS.write_text(updated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true",
                        help="print the section instead of writing docs/benchmarks.md")
    options = parser.parse_args()

    host = machine()
    invoke("destroy", "--region", "local", "--yes", timeout=600)
    invoke("box", timeout=1800)
    try:
        first = invoke("build", "--region", "local", timeout=3000)
        second = invoke("build", "--region", "local", timeout=1800)
    finally:
        invoke("destroy", "--region", "local", "--yes", timeout=600)

    text = section(first, second, host)
    print(text)
    if not options.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
