"""Nightly runs: the monitor, then the infra suite on every region at once.

One run writes `reports/<region>/junit.xml` per region (through the infra
step), appends a record to `reports/nightly/history.json` (the last
`history_size` runs are kept) and renders `reports/nightly/index.html`, a
static page with no external assets: the region table, an inline SVG latency
chart and the status trend over the kept runs.
"""

from __future__ import annotations

import json
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from fleet.monitor import Result

log = logging.getLogger(__name__)

DEFAULT_HISTORY_SIZE = 30
TEMPLATES = Path(__file__).parent / "templates"

# Exit codes of `invoke nightly`, documented for cron in docs/monitoring.md.
EXIT_GREEN = 0
EXIT_RED = 1


@dataclass
class SuiteOutcome:
    """Counts from one region's JUnit file; `missing` when none was written."""

    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)
    missing: str | None = None

    @property
    def passed(self) -> bool:
        return self.missing is None and not self.failures and not self.errors


def read_junit(path: Path) -> SuiteOutcome:
    """Sum the testsuite counts in a JUnit XML file and list failing cases."""
    if not path.exists():
        return SuiteOutcome(missing=f"no JUnit report at {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        return SuiteOutcome(missing=f"unreadable JUnit report {path}: {error}")

    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    outcome = SuiteOutcome()
    for suite in suites:
        outcome.tests += int(suite.get("tests", 0))
        outcome.failures += int(suite.get("failures", 0))
        outcome.errors += int(suite.get("errors", 0))
        outcome.skipped += int(suite.get("skipped", 0))
        outcome.seconds += float(suite.get("time", 0) or 0)
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                outcome.failed.append(case.get("name", "?"))
    return outcome


def region_record(
    name: str, suite: SuiteOutcome, box: Result | None, suite_note: str | None
) -> dict[str, Any]:
    """Combine one region's suite outcome and monitor result into a record."""
    problems = list(box.problems) if box else ["not checked by the monitor"]
    if suite.missing:
        problems.append(suite.missing)
    if suite.failed:
        problems.append("infra tests failed: " + ", ".join(suite.failed[:5]))
    elif suite_note:
        # Failing tests also fail the step; its note is only news without them.
        problems.append(suite_note)
    green = suite.passed and box is not None and box.healthy and not suite_note
    return {
        "region": name,
        "green": green,
        "latency_ms": box.latency_ms if box else None,
        "ready": box.ready if box else None,
        "lag_seconds": box.lag_seconds if box else None,
        "disk_percent": box.disk_percent if box else None,
        "cert_days": box.cert_days if box else None,
        "suite": asdict(suite),
        "problems": problems,
    }


# History


def load_history(path: Path) -> list[dict[str, Any]]:
    """Return the kept run records, oldest first; an unreadable file is reset."""
    if not path.exists():
        return []
    try:
        runs = json.loads(path.read_text())
    except ValueError as error:
        log.warning("event=history_unreadable path=%s error=%s", path, error)
        return []
    return runs if isinstance(runs, list) else []


def append_history(
    path: Path, run: dict[str, Any], size: int = DEFAULT_HISTORY_SIZE
) -> list[dict[str, Any]]:
    """Append one run record and keep only the last `size` runs on disk."""
    runs = (load_history(path) + [run])[-size:]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(runs, indent=1))
    temporary.replace(path)
    return runs


# The HTML report

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]


def latency_chart(
    runs: list[dict[str, Any]], width: int = 640, height: int = 220
) -> dict[str, Any]:
    """Lay out an SVG line chart of each region's latency over the kept runs.

    Returns plain numbers and point lists for the template; a run where a box
    did not answer leaves a gap in that region's line.
    """
    regions = sorted({r["region"] for run in runs for r in run["regions"]})
    values = [
        r["latency_ms"]
        for run in runs
        for r in run["regions"]
        if r.get("latency_ms") is not None
    ]
    top = max(values, default=1.0) * 1.15 or 1.0
    left, right, upper, lower = 50, 10, 10, 30
    plot_w, plot_h = width - left - right, height - upper - lower
    step = plot_w / max(len(runs) - 1, 1)

    def y(value: float) -> float:
        return round(upper + plot_h - value / top * plot_h, 1)

    lines = []
    for index, region in enumerate(regions):
        segments, current = [], []
        for position, run in enumerate(runs):
            record = next((r for r in run["regions"] if r["region"] == region), None)
            latency = record.get("latency_ms") if record else None
            if latency is None:
                if current:
                    segments.append(current)
                current = []
                continue
            current.append((round(left + position * step, 1), y(latency)))
        if current:
            segments.append(current)
        lines.append(
            {
                "region": region,
                "color": PALETTE[index % len(PALETTE)],
                "segments": [
                    " ".join(f"{px},{py}" for px, py in seg) for seg in segments
                ],
                "dots": [point for seg in segments for point in seg],
            }
        )
    ticks = [
        {"y": y(top * fraction), "label": f"{top * fraction:.0f}"}
        for fraction in (0, 0.25, 0.5, 0.75, 1.0)
    ]
    return {
        "width": width,
        "height": height,
        "left": left,
        "bottom": upper + plot_h,
        "right": width - right,
        "lines": lines,
        "ticks": ticks,
    }


def render_report(runs: list[dict[str, Any]]) -> str:
    """Render the static HTML page for the latest run and the kept trend."""
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = environment.get_template("nightly.html.j2")
    latest = runs[-1]
    regions = sorted({r["region"] for run in runs for r in run["regions"]})
    trend = [
        {
            "started": run["started"],
            "cells": {r["region"]: r["green"] for r in run["regions"]},
        }
        for run in runs
    ]
    return template.render(
        latest=latest,
        chart=latency_chart(runs),
        regions=regions,
        trend=list(reversed(trend)),
    )


# The run


InfraRunner = Callable[[Any, Any], str]


def infra_step(fleet: Any, region: Any) -> str:
    """Run the shared infra step (`fleet.infra.run`) for one region."""
    from fleet import infra
    from fleet.pipeline import StepContext

    log_path = Path(region.box_dir) / "logs" / "nightly.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    context = StepContext(fleet=fleet, region=region, log_path=log_path, keep=True,
                          step="test")
    return infra.run(context)


def run_suites(
    fleet: Any, regions: list[Any], runner: InfraRunner, reports: Path
) -> dict[str, str | None]:
    """Run the infra suite of every region at once; return failure notes."""
    def one(region: Any) -> str | None:
        # A report left by an earlier run must not pass for this one.
        (reports / region.name / "junit.xml").unlink(missing_ok=True)
        started = time.monotonic()
        try:
            note = runner(fleet, region)
        except Exception as error:  # noqa: BLE001 (every region's fate is reported)
            log.error("event=suite_failed region=%s error=%s", region.name, error)
            return f"infra step failed: {error}"
        log.info(
            "event=suite_done region=%s seconds=%.1f note=%s",
            region.name, time.monotonic() - started, note,
        )
        return None

    if not regions:
        return {}
    with ThreadPoolExecutor(max_workers=len(regions)) as pool:
        notes = list(pool.map(one, regions))
    return {region.name: note for region, note in zip(regions, notes, strict=True)}


def run(
    fleet: Any,
    regions: list[Any],
    reports: Path,
    check_boxes: Callable[[], list[Result]],
    runner: InfraRunner = infra_step,
    history_size: int = DEFAULT_HISTORY_SIZE,
) -> dict[str, Any]:
    """Run the monitor, then every region's suite at once; write the report.

    `check_boxes` runs the monitor over the same regions. It runs before the
    suites because they restart the app to test recovery, and a check
    during that restart would report an outage the users never see.
    Returns the run record; its `green` is False when any region is red.
    """
    started = datetime.now(UTC)
    clock = time.monotonic()
    boxes = {result.region: result for result in check_boxes()}
    notes = run_suites(fleet, regions, runner, reports)

    records = [
        region_record(
            region.name,
            read_junit(reports / region.name / "junit.xml"),
            boxes.get(region.name),
            notes.get(region.name),
        )
        for region in regions
    ]
    run_record = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - clock, 1),
        "green": all(r["green"] for r in records),
        "regions": records,
    }
    return write(run_record, reports / "nightly", history_size)


def write(
    run_record: dict[str, Any], directory: Path, history_size: int
) -> dict[str, Any]:
    """Append the run to the history and re-render index.html from it."""
    runs = append_history(directory / "history.json", run_record, history_size)
    page = directory / "index.html"
    page.write_text(render_report(runs))
    log.info(
        "event=nightly_written path=%s green=%s regions=%d seconds=%s",
        page, run_record["green"], len(run_record["regions"]), run_record["seconds"],
    )
    return run_record
