"""The `test` step: run the testinfra suite in tests/infra/ against a box.

pytest runs as a child process with `--hosts=ssh://<region>` and the box's
ssh-config (absolute path) and writes `reports/<region>/junit.xml`. Checks
skipped as not applicable (Dokku-only checks in the lab) are counted apart
from passes in the step's note.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from fleet.errors import FleetError
from fleet.vagrant import Machine

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE = REPO_ROOT / "tests" / "infra"
REPORTS = REPO_ROOT / "reports"
SUITE_TIMEOUT = 900.0


@dataclass(frozen=True)
class SuiteResult:
    """Counts from a junit.xml report."""

    tests: int
    failures: int
    errors: int
    skipped: int

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.errors == 0 and self.tests > 0


def report_path(region_name: str) -> Path:
    return REPORTS / region_name / "junit.xml"


def read_report(path: Path) -> SuiteResult:
    """Sum the counts of every test suite in a junit.xml file."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise FleetError(f"cannot read the infra report {path}: {error}") from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    totals = [0, 0, 0, 0]
    for suite in suites:
        for index, key in enumerate(("tests", "failures", "errors", "skipped")):
            totals[index] += int(suite.get(key, "0"))
    return SuiteResult(*totals)


def pytest_argv(region_name: str, ssh_config: Path, report: Path) -> list[str]:
    return [
        sys.executable, "-m", "pytest", str(SUITE),
        f"--hosts=ssh://{region_name}", f"--ssh-config={ssh_config.resolve()}",
        f"--junitxml={report}", "-o", "junit_family=xunit2",
        "-p", "no:cacheprovider", "-rs", "-q", "--timeout=300",
    ]


def run(ctx: Any) -> str:
    """Run tests/infra/ on the region's box; fail the step on any failure."""
    region = ctx.region
    ssh_config = Machine(region, ctx).ssh_config_path()
    report = report_path(region.name)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.unlink(missing_ok=True)

    ctx.run(
        pytest_argv(region.name, ssh_config, report), check=False, cwd=REPO_ROOT,
        env={"VATFLEET_REGION": region.name, "FLEET_CONFIG": str(ctx.fleet.path)},
        timeout=SUITE_TIMEOUT,
    )
    if not report.exists():
        raise FleetError(f"pytest wrote no report to {report}; see {ctx.log_path}")
    result = read_report(report)
    log.info("event=infra_checked region=%s passed=%d failed=%d skipped=%d",
             region.name, result.passed, result.failures + result.errors,
             result.skipped)
    note = f"{result.passed} passed, {result.skipped} not applicable"
    if not result.ok:
        raise FleetError(
            f"{result.failures + result.errors} of {result.tests} infra checks "
            f"failed on {region.name} ({note}); see {report} and {ctx.log_path}"
        )
    return note
