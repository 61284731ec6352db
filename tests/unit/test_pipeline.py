"""Tests for fleet.pipeline: the command runner, ordering, failures, parallelism."""

from __future__ import annotations

import io
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from fleet import pipeline, regions
from fleet.pipeline import StepContext, StepFailed

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet(tmp_path):
    config = tmp_path / "regions.toml"
    config.write_text((REPO / "regions.toml").read_text())
    return regions.load(config)


def quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


def ctx_for(fleet, name="local", step="up") -> StepContext:
    region = fleet.regions[name]
    return StepContext(fleet, region, pipeline.log_path_for(region, step), False, step)


def test_run_logs_output(fleet):
    ctx = ctx_for(fleet)
    result = ctx.run([sys.executable, "-c", ("print('out'); import sys; "
                      "print('err', file=sys.stderr)")])
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    text = ctx.log_path.read_text()
    assert "out\n" in text
    assert "[stderr] err" in text
    assert "# exit=0" in text


def test_run_failure_raises_with_log(fleet):
    ctx = ctx_for(fleet)
    with pytest.raises(StepFailed) as caught:
        ctx.run([sys.executable, "-c", "import sys; print('bad thing'); sys.exit(4)"])
    error = caught.value
    assert error.step == "up"
    assert error.region == "local"
    assert error.log_path == ctx.log_path
    assert "exited with 4: bad thing" in error.message


def test_run_no_check(fleet):
    result = ctx_for(fleet).run([sys.executable, "-c", "raise SystemExit(2)"],
                                check=False)
    assert result.returncode == 2


def test_run_input_and_env(fleet):
    result = ctx_for(fleet).run(
        [sys.executable, "-c",
         "import os, sys; print(sys.stdin.read() + os.environ['X'])"],
        input="in-", env={"X": "env"})
    assert result.stdout.strip() == "in-env"


def test_run_timeout(fleet):
    started = time.monotonic()
    with pytest.raises(StepFailed) as caught:
        ctx_for(fleet).run([sys.executable, "-c", "import time; time.sleep(30)"],
                           timeout=0.5)
    assert "timed out after 0.5 s" in caught.value.message
    assert time.monotonic() - started < 10


def test_run_missing_program(fleet):
    with pytest.raises(StepFailed) as caught:
        ctx_for(fleet).run(["/nonexistent/program"])
    assert "cannot run" in caught.value.message


def test_steps_in_order_and_table(fleet):
    calls = []

    def step(name):
        def run(ctx):
            calls.append((ctx.region.name, name))
            return f"{name} done"
        return run

    selected = fleet.select("local,eu-west-1")
    report = pipeline.run_steps(fleet, selected, [("a", step("a")), ("b", step("b"))],
                                console=quiet())
    assert report.ok
    for region in ("local", "eu-west-1"):
        assert [s for r, s in calls if r == region] == ["a", "b"]
    assert [(r.region, r.step) for r in report.results] == [
        ("local", "a"), ("local", "b"), ("eu-west-1", "a"), ("eu-west-1", "b")]
    table = pipeline.summary_table(report)
    assert [c.header for c in table.columns] == ["region", "step", "result", "seconds"]


def test_failure_stops_and_cleans_up(fleet):
    cleaned = []

    def ok(ctx):
        return "ok"

    def fail(ctx):
        raise StepFailed(ctx.step, ctx.region.name, ctx.log_path, "it broke")

    def never(ctx):
        raise AssertionError("must not run after a failure")

    def on_failure(ctx, failure):
        cleaned.append((ctx.region.name, failure.step))
        return "destroyed"

    report = pipeline.run_steps(
        fleet, fleet.select("local"), [("a", ok), ("b", fail), ("c", never)],
        on_failure=on_failure, console=quiet())
    assert not report.ok
    assert report.failure.step == "b"
    assert report.failure.region == "local"
    assert report.failure.log_path == pipeline.log_path_for(fleet.regions["local"], "b")
    assert cleaned == [("local", "b")]
    assert [r.step for r in report.results] == ["a", "b", "cleanup"]


@pytest.mark.parametrize(("fail_fast", "expected"), [
    (True, "skipped: another step failed"),
    (False, "ran"),
])
def test_fail_fast_stops_other_regions(fleet, fail_fast, expected):
    started = threading.Event()
    failed = threading.Event()

    def first(ctx):
        if ctx.region.name == "local":
            assert started.wait(timeout=10)
            raise StepFailed(ctx.step, ctx.region.name, ctx.log_path, "broke")
        started.set()
        assert failed.wait(timeout=10)
        return "waited"

    def second(ctx):
        return "ran"

    def on_failure(ctx, failure):
        failed.set()
        return "cleaned"

    report = pipeline.run_steps(
        fleet, fleet.select("local,eu-west-1"), [("a", first), ("b", second)],
        on_failure=on_failure, fail_fast=fail_fast, console=quiet())
    rows = {(r.region, r.step): r.result for r in report.results}
    assert rows[("local", "a")] == "FAILED: broke"
    assert ("local", "b") not in rows
    assert rows[("eu-west-1", "a")] == "waited"
    assert rows[("eu-west-1", "b")] == expected


def test_unexpected_exception_is_failure(fleet):
    def crash(ctx):
        raise KeyError("oops")

    report = pipeline.run_steps(fleet, fleet.select("local"), [("a", crash)],
                                console=quiet())
    assert report.failure.step == "a"
    assert "oops" in report.results[0].result


def test_cloud_regions_run_in_parallel(fleet):
    barrier = threading.Barrier(3, timeout=5)

    def meet(ctx):
        barrier.wait()  # raises BrokenBarrierError unless all three run together
        return "met"

    report = pipeline.run_steps(fleet, fleet.select("eu-west-1,us-east-1,fr-par-1"),
                                [("a", meet)], console=quiet())
    assert report.ok, report.results


def test_virtualbox_regions_run_one_at_a_time(tmp_path):
    config = tmp_path / "regions.toml"
    config.write_text("""
[project]
name = "p"
domain = "api.p.example"
primary = "vb1"

[regions.vb1]
provider = "virtualbox"
private_ip = "192.168.56.11"
hostname = "vb1.p.test"

[regions.vb2]
provider = "virtualbox"
private_ip = "192.168.56.12"
hostname = "vb2.p.test"
""")
    fleet = regions.load(config)
    running = []
    overlaps = []
    lock = threading.Lock()

    def slow(ctx):
        with lock:
            running.append(ctx.region.name)
            if len(running) > 1:
                overlaps.append(tuple(running))
        time.sleep(0.3)
        with lock:
            running.remove(ctx.region.name)
        return "ok"

    report = pipeline.run_steps(fleet, fleet.select("all"), [("a", slow)],
                                console=quiet())
    assert report.ok
    assert overlaps == []


def test_shared_step_never_overlaps(fleet, tmp_path):
    active = []
    seen = []

    def box(ctx):
        active.append(1)
        seen.append(len(active))
        time.sleep(0.2)
        active.pop()
        return "built"

    second = tmp_path / "two.toml"
    second.write_text((REPO / "regions.toml").read_text() + """
[regions.local2]
provider = "docker"
hostname = "local2.vatrates.test"
ssh_port = 2299
http_port = 8099
https_port = 8499
""")
    fleet = regions.load(second)
    report = pipeline.run_steps(fleet, fleet.select("local,local2"), [("box", box)],
                                console=quiet())
    assert report.ok
    assert max(seen) == 1


def test_failures_listed_in_selection_order(fleet):
    def fail_some(ctx):
        if ctx.region.name == "local":
            return "ok"
        raise StepFailed(ctx.step, ctx.region.name, None, f"{ctx.region.name} broke")

    report = pipeline.run_steps(
        fleet, fleet.select("us-east-1,local,eu-west-1,fr-par-1"),
        [("a", fail_some)], console=quiet())
    assert [f.region for f in report.failures] == ["us-east-1", "eu-west-1",
                                                   "fr-par-1"]
    assert report.failure.region == "us-east-1"
    lines = pipeline.failure_summary(report).splitlines()
    assert lines[0] == "3 regions failed:"
    for line, name in zip(lines[1:], ("us-east-1", "eu-west-1", "fr-par-1"),
                          strict=True):
        log_file = pipeline.log_path_for(fleet.regions[name], "a")
        assert line == (f"  step a failed on region {name}: {name} broke; "
                        f"log file: {log_file}")


def test_summary_table_without_step_column(fleet):
    report = pipeline.run_steps(fleet, fleet.select("local"),
                                [("status", lambda ctx: "running")], console=quiet())
    table = pipeline.summary_table(report, "status", show_step=False)
    assert [c.header for c in table.columns] == ["region", "result", "seconds"]
    assert [str(cell) for cell in table.columns[1].cells] == ["running"]
