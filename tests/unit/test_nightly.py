"""Nightly report built from sample JUnit files and monitor results."""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from fleet import nightly
from fleet.monitor import Result

PASSING = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5" failures="0" errors="0"
 skipped="1" time="3.2">
<testcase classname="tests.infra.test_nginx" name="test_nginx_version" time="0.1"/>
<testcase classname="tests.infra.test_dokku" name="test_dokku_apps" time="0.0">
<skipped message="not applicable in the lab: Dokku is not installed"/></testcase>
</testsuite></testsuites>
"""

FAILING = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4" failures="1" errors="1"
 skipped="0" time="2.0">
<testcase classname="tests.infra.test_app" name="test_app_answers" time="0.1">
<failure message="502 Bad Gateway"/></testcase>
<testcase classname="tests.infra.test_disk" name="test_disk_under_threshold">
<error message="ssh failed"/></testcase>
</testsuite></testsuites>
"""


def box_result(region: str, healthy: bool = True, latency: float = 12.0) -> Result:
    result = Result(region=region, address="127.0.0.1:8541", checked_at="now")
    if healthy:
        result.reachable, result.status, result.ready = True, 200, True
        result.latency_ms, result.lag_seconds = latency, 0.2
        result.disk_percent, result.cert_days = 31, 89.5
    else:
        result.problems.append("unreachable: connection refused")
    return result


def write_junit(reports: Path, region: str, text: str) -> None:
    (reports / region).mkdir(parents=True, exist_ok=True)
    (reports / region / "junit.xml").write_text(text)


def regions(*names: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(name=name, box_dir=Path("unused")) for name in names]


def runner_writing(reports: Path, texts: dict[str, str]):
    """Stand in for the infra step: write the sample JUnit file of a region."""
    def runner(_fleet, region):
        write_junit(reports, region.name, texts[region.name])
        return "tests ran"

    return runner


def test_read_junit_counts_and_failures(tmp_path):
    write_junit(tmp_path, "lab-east", FAILING)

    outcome = nightly.read_junit(tmp_path / "lab-east" / "junit.xml")

    assert (outcome.tests, outcome.failures, outcome.errors) == (4, 1, 1)
    assert outcome.failed == ["test_app_answers", "test_disk_under_threshold"]
    assert not outcome.passed


def test_read_junit_skips_are_not_failures(tmp_path):
    write_junit(tmp_path, "lab-west", PASSING)

    outcome = nightly.read_junit(tmp_path / "lab-west" / "junit.xml")

    assert outcome.skipped == 1
    assert outcome.passed


def test_read_junit_missing_file_fails(tmp_path):
    outcome = nightly.read_junit(tmp_path / "nowhere" / "junit.xml")

    assert not outcome.passed
    assert "no JUnit report" in outcome.missing


def test_report_all_green(tmp_path):
    texts = {"lab-primary": PASSING, "lab-west": PASSING}
    record = nightly.run(
        None,
        regions("lab-primary", "lab-west"),
        tmp_path,
        lambda: [
            box_result("lab-primary", latency=5),
            box_result("lab-west", latency=80),
        ],
        runner=runner_writing(tmp_path, texts),
    )

    page = (tmp_path / "nightly" / "index.html").read_text()
    assert record["green"] is True
    assert "all regions green" in page
    assert page.count('class="green" data-region=') == 2
    assert 'class="red" data-region=' not in page
    assert "80 ms" in page
    assert "90" in page  # certificate days, rounded
    assert "31%" in page
    assert "4 passed, 0 failed, 1 skipped or not applicable" in page


def test_report_turns_red_for_dead_box(tmp_path):
    texts = {"lab-primary": PASSING, "lab-east": FAILING}
    record = nightly.run(
        None,
        regions("lab-primary", "lab-east"),
        tmp_path,
        lambda: [box_result("lab-primary"), box_result("lab-east", healthy=False)],
        runner=runner_writing(tmp_path, texts),
    )

    page = (tmp_path / "nightly" / "index.html").read_text()
    east = next(r for r in record["regions"] if r["region"] == "lab-east")
    assert record["green"] is False
    assert east["green"] is False
    assert 'class="red" data-region="lab-east"' in page
    assert 'class="green" data-region="lab-primary"' in page
    assert "unreachable: connection refused" in page
    assert "infra tests failed: test_app_answers" in page
    assert "RED" in page


def test_suite_error_turns_region_red(tmp_path):
    def broken(_fleet, _region):
        raise RuntimeError("ssh: connect to host 127.0.0.1 port 2232 refused")

    record = nightly.run(
        None, regions("lab-west"), tmp_path, lambda: [box_result("lab-west")],
        runner=broken,
    )

    problems = record["regions"][0]["problems"]
    assert record["green"] is False
    assert any("infra step failed" in p for p in problems)


def test_stale_junit_is_not_reused(tmp_path):
    write_junit(tmp_path, "lab-west", PASSING)

    record = nightly.run(
        None, regions("lab-west"), tmp_path, lambda: [box_result("lab-west")],
        runner=lambda _fleet, _region: "wrote nothing",
    )

    assert record["green"] is False
    assert any("no JUnit report" in p for p in record["regions"][0]["problems"])


def test_suites_run_in_parallel(tmp_path):
    names = ["lab-primary", "lab-west", "lab-east"]
    running, peak, lock = [0], [0], threading.Lock()

    def slow(_fleet, region):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.5)
        write_junit(tmp_path, region.name, PASSING)
        with lock:
            running[0] -= 1
        return "ok"

    nightly.run(None, regions(*names), tmp_path,
                lambda: [box_result(n) for n in names], runner=slow)

    # All three suites ran at the same time; how long that took is for
    # bench/monitor_bench.py to measure, not for a test on a loaded machine.
    assert peak[0] == 3


def test_history_bounded_and_trend_shown(tmp_path):
    texts = {"lab-west": PASSING}
    for healthy in (True, False, True, True):
        nightly.run(
            None, regions("lab-west"), tmp_path,
            lambda h=healthy: [box_result("lab-west", healthy=h)],
            runner=runner_writing(tmp_path, texts), history_size=3,
        )

    runs = json.loads((tmp_path / "nightly" / "history.json").read_text())
    page = (tmp_path / "nightly" / "index.html").read_text()
    trend = page.split('id="trend"')[1]
    assert len(runs) == 3
    assert [run["green"] for run in runs] == [False, True, True]
    assert trend.count("cell green") == 2
    assert trend.count("cell red") == 1


def test_history_unreadable_file_starts_over(tmp_path):
    path = tmp_path / "history.json"
    path.write_text("{not json")

    runs = nightly.append_history(path, {"started": "x", "regions": []})

    assert runs == [{"started": "x", "regions": []}]


def test_latency_chart_is_inline_svg(tmp_path):
    texts = {"lab-west": PASSING, "lab-east": PASSING}
    for latency in (10.0, 40.0):
        nightly.run(
            None, regions("lab-west", "lab-east"), tmp_path,
            lambda lat=latency: [box_result("lab-west", latency=lat),
                                 box_result("lab-east", latency=lat * 2)],
            runner=runner_writing(tmp_path, texts),
        )

    page = (tmp_path / "nightly" / "index.html").read_text()
    svg = page[page.index("<svg"): page.index("</svg>") + len("</svg>")]
    tree = ET.fromstring(svg)
    namespace = "{http://www.w3.org/2000/svg}"
    lines = tree.findall(f"{namespace}polyline")
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in page
    assert sorted(line.get("data-region") for line in lines) == ["lab-east",
                                                                   "lab-west"]
    east = next(line for line in lines if line.get("data-region") == "lab-east")
    points = [tuple(map(float, p.split(","))) for p in east.get("points").split()]
    assert len(points) == 2
    # Higher latency is drawn higher up, so the second y is smaller.
    assert points[1][1] < points[0][1]


def test_chart_leaves_gap_for_missing_latency():
    runs = [
        {"regions": [{"region": "lab-east", "latency_ms": lat}]}
        for lat in (10.0, None, 30.0)
    ]

    chart = nightly.latency_chart(runs)

    assert len(chart["lines"][0]["segments"]) == 2


@pytest.mark.parametrize("name", ["<script>", "a&b"])
def test_report_escapes_problem_text(tmp_path, name):
    result = box_result("lab-west", healthy=False)
    result.problems = [f"certificate does not name {name}"]
    nightly.run(
        None, regions("lab-west"), tmp_path, lambda: [result],
        runner=runner_writing(tmp_path, {"lab-west": PASSING}),
    )

    page = (tmp_path / "nightly" / "index.html").read_text()
    assert name not in page
