"""Run build steps over regions: in parallel for cloud, one at a time otherwise.

A step is a function `run(ctx: StepContext) -> str` that returns a short note
for the summary table. Each region runs its steps in order and stops at its
first failure. With `fail_fast` (what `invoke build` uses), a failure on one
region also stops the others from starting a new step. Commands a step runs
are appended to `boxes/<region>/logs/<step>.log`.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fleet.regions import Fleet, Region

log = logging.getLogger(__name__)

# Steps that touch something every region of a host shares (the lab box image
# of docker regions): they never run twice at the same time.
SHARED_STEPS = frozenset({"box"})
_shared_lock = threading.Lock()
MAX_PARALLEL = 8


class StepFailed(Exception):
    """A step failed on one region; the log file has the details."""

    def __init__(self, step: str, region: str, log_path: Path | None,
                 message: str) -> None:
        super().__init__(message)
        self.step = step
        self.region = region
        self.log_path = log_path
        self.message = message

    def __str__(self) -> str:
        where = f"; log: {self.log_path}" if self.log_path else ""
        return f"step {self.step} failed on region {self.region}: {self.message}{where}"


@dataclass
class StepContext:
    """Inputs of one step on one region: fleet, region, log file and options."""

    fleet: Fleet
    region: Region
    log_path: Path
    keep: bool = False
    step: str = ""
    run_id: str = ""

    def log(self, message: str) -> None:
        """Append one line to this step's log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(message.rstrip("\n") + "\n")

    def run(self, argv: list[str], *, input: str | None = None,
            check: bool = True, timeout: float | None = None,
            cwd: Path | str | None = None, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run argv, append its output to the log, raise StepFailed on error.

        The command line is logged with shlex.join, so never pass a secret in
        argv: hand it over through `input` or `env` instead.
        """
        self.log(f"$ {shlex.join(str(a) for a in argv)}")
        started = time.monotonic()
        full_env = None if env is None else {**os.environ, **env}
        try:
            process = subprocess.Popen(
                [str(a) for a in argv], cwd=cwd, env=full_env, text=True,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            self.log(f"! cannot start: {error}")
            raise StepFailed(self.step, self.region.name, self.log_path,
                             f"cannot run {argv[0]}: {error.strerror}") from None

        stdout, stderr = self._collect(process, input, timeout, argv)
        seconds = time.monotonic() - started
        self.log(f"# exit={process.returncode} seconds={seconds:.1f}")
        result = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
        if check and process.returncode != 0:
            last = (stderr.strip() or stdout.strip()).splitlines()[-1:] or [""]
            raise StepFailed(
                self.step, self.region.name, self.log_path,
                f"{shlex.join(str(a) for a in argv[:3])} exited with "
                f"{process.returncode}: {last[0][:200]}",
            )
        return result

    def _collect(self, process: subprocess.Popen[str], input: str | None,
                 timeout: float | None, argv: list[str]) -> tuple[str, str]:
        chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}
        lock = threading.Lock()

        def pump(name: str) -> None:
            stream = getattr(process, name)
            for line in stream:
                chunks[name].append(line)
                with lock:
                    self.log(line if name == "stdout" else f"[stderr] {line}")

        readers = [threading.Thread(target=pump, args=(name,), daemon=True)
                   for name in chunks]
        for reader in readers:
            reader.start()
        if input is not None and process.stdin is not None:
            try:
                process.stdin.write(input)
                process.stdin.close()
            except BrokenPipeError:
                pass

        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            self.log(f"! timed out after {timeout} s")
            raise StepFailed(
                self.step, self.region.name, self.log_path,
                f"{shlex.join(str(a) for a in argv[:3])} timed out after {timeout} s",
            ) from None
        finally:
            for reader in readers:
                reader.join(timeout=5)
        return "".join(chunks["stdout"]), "".join(chunks["stderr"])


Step = Callable[[StepContext], str]


@dataclass
class StepResult:
    """One row of the summary table."""

    region: str
    step: str
    result: str
    seconds: float
    ok: bool
    log_path: Path | None = None


@dataclass
class RunReport:
    """Everything a run did: its rows and failures, in selection order."""

    results: list[StepResult] = field(default_factory=list)
    failures: list[StepFailed] = field(default_factory=list)

    @property
    def failure(self) -> StepFailed | None:
        """Return the failure of the first failed region in selection order."""
        return self.failures[0] if self.failures else None

    @property
    def ok(self) -> bool:
        return not self.failures and all(r.ok for r in self.results)


def log_path_for(region: Region, step: str) -> Path:
    return region.box_dir / "logs" / f"{step}.log"


def run_steps(
    fleet: Fleet,
    regions: Sequence[Region],
    steps: Sequence[tuple[str, Step]],
    *,
    keep: bool = False,
    run_id: str = "",
    on_failure: Callable[[StepContext, StepFailed], str] | None = None,
    fail_fast: bool = False,
    console: Console | None = None,
) -> RunReport:
    """Run `steps` on every region and return the report.

    Cloud and docker regions run side by side in a thread pool. VirtualBox
    regions share one worker, because VirtualBox is not safe to drive from
    several processes at once. `on_failure` runs for the failed region, and
    its note is added to the table; the core tasks use it to destroy the box
    unless --keep was given. With `fail_fast`, the first failure keeps every
    region from starting another step.
    """
    console = console or Console(stderr=True)
    run_id = run_id or time.strftime("%Y%m%d%H%M%S", time.gmtime())
    report = RunReport()
    stop = threading.Event()
    report_lock = threading.Lock()

    serial = [r for r in regions if r.provider == "virtualbox"]
    parallel = [r for r in regions if r.provider != "virtualbox"]

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
        tasks = {r.name: progress.add_task(f"{r.name}: waiting", total=None)
                 for r in regions}

        def run_region(region: Region) -> None:
            for name, step in steps:
                if stop.is_set():
                    _record(report, report_lock, StepResult(
                        region.name, name, "skipped: another step failed", 0.0, True))
                    continue
                progress.update(tasks[region.name],
                                description=f"{region.name}: {name}")
                ctx = StepContext(fleet, region, log_path_for(region, name), keep,
                                  name, run_id)
                result = _run_one(ctx, step)
                _record(report, report_lock, result)
                if not result.ok:
                    _handle_failure(ctx, result, report, report_lock,
                                    stop if fail_fast else None, on_failure)
                    break
            progress.update(tasks[region.name], description=f"{region.name}: done")

        def run_guarded(region: Region) -> None:
            try:
                run_region(region)
            except Exception as error:  # a bug in a step must not hang the pool
                log.exception("event=step_crashed region=%s", region.name)
                failure = StepFailed("?", region.name, None, repr(error))
                with report_lock:
                    report.failures.append(failure)
                if fail_fast:
                    stop.set()

        def run_serial(group: list[Region]) -> None:
            for region in group:
                run_guarded(region)

        workers = max(1, min(MAX_PARALLEL, len(parallel) + (1 if serial else 0)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_guarded, r) for r in parallel]
            if serial:
                futures.append(pool.submit(run_serial, serial))
            for future in futures:
                future.result()

    # Rows in selection order, then step order, whatever order they finished in.
    region_order = {r.name: i for i, r in enumerate(regions)}
    step_order = {name: i for i, (name, _) in enumerate(steps)}
    report.results.sort(key=lambda row: (region_order.get(row.region, 0),
                                         step_order.get(row.step, len(steps))))
    report.failures.sort(key=lambda failure: region_order.get(failure.region, 0))
    return report



def _run_one(ctx: StepContext, step: Step) -> StepResult:
    started = time.monotonic()
    log.info("event=step_start region=%s step=%s", ctx.region.name, ctx.step)
    try:
        if ctx.step in SHARED_STEPS:
            with _shared_lock:
                note = step(ctx)
        else:
            note = step(ctx)
    except StepFailed as error:
        seconds = time.monotonic() - started
        log.info("event=step_failed region=%s step=%s seconds=%.1f",
                 ctx.region.name, ctx.step, seconds)
        return StepResult(ctx.region.name, ctx.step, f"FAILED: {error.message}",
                          seconds, False, error.log_path or ctx.log_path)
    except Exception as error:  # noqa: BLE001 - reported as a failed step
        seconds = time.monotonic() - started
        ctx.log(f"! {type(error).__name__}: {error}")
        log.info("event=step_failed region=%s step=%s seconds=%.1f error=%s",
                 ctx.region.name, ctx.step, seconds, type(error).__name__)
        return StepResult(ctx.region.name, ctx.step, f"FAILED: {error}", seconds,
                          False, ctx.log_path)

    seconds = time.monotonic() - started
    log.info("event=step_done region=%s step=%s seconds=%.1f",
             ctx.region.name, ctx.step, seconds)
    return StepResult(ctx.region.name, ctx.step, note or "ok", seconds, True,
                      ctx.log_path)


def _record(report: RunReport, lock: threading.Lock, result: StepResult) -> None:
    with lock:
        report.results.append(result)


def _handle_failure(ctx: StepContext, result: StepResult, report: RunReport,
                    lock: threading.Lock, stop: threading.Event | None,
                    on_failure: Callable[[StepContext, StepFailed], str] | None,
                    ) -> None:
    failure = StepFailed(ctx.step, ctx.region.name, result.log_path,
                         result.result.removeprefix("FAILED: "))
    with lock:
        report.failures.append(failure)
    if stop is not None:
        stop.set()
    if on_failure is None:
        return

    started = time.monotonic()
    try:
        note = on_failure(ctx, failure)
    except Exception as error:  # noqa: BLE001 - cleanup failure is reported
        note = f"cleanup failed: {error}"
    _record(report, lock, StepResult(ctx.region.name, "cleanup", note,
                                     time.monotonic() - started, True))


def failure_summary(report: RunReport) -> str:
    """Return one line per failed region, in selection order, for the exit message.

    One failure keeps the single-line form. Several get a count and then one
    indented line each, so that no failed region goes unreported.
    """
    lines = []
    for failure in report.failures:
        log_note = f"; log file: {failure.log_path}" if failure.log_path else ""
        lines.append(f"step {failure.step} failed on region {failure.region}: "
                     f"{failure.message}{log_note}")
    if len(lines) < 2:
        return "".join(lines)
    return "\n".join([f"{len(lines)} regions failed:",
                      *(f"  {line}" for line in lines)])


def summary_table(report: RunReport, title: str = "", show_step: bool = True
                  ) -> Table:
    """Build the final table: region, step, result, seconds.

    Without `show_step` the step column is left out, for tasks whose only
    step has the task's own name.
    """
    table = Table(title=title or None)
    table.add_column("region")
    if show_step:
        table.add_column("step")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    for row in report.results:
        style = None if row.ok else "bold red"
        # Text cells: messages contain "[regions.x]", which rich would read
        # as markup.
        cells = [Text(row.region), Text(row.step)] if show_step else [Text(row.region)]
        table.add_row(*cells, Text(row.result), f"{row.seconds:.1f}", style=style)
    return table
