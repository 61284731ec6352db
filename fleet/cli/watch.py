"""Tasks that watch running boxes: `monitor` and `nightly`."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Exit, task

from fleet.errors import FleetError

MONITOR_HELP = {
    "region": 'region name, "a,b" or "all" (default: all)',
    "config": "regions file (default: $FLEET_CONFIG, else regions.toml)",
    "json": "print JSON for machines instead of the table",
    "timeout": "seconds each box may take for its checks (default: 10)",
    "cert-days": "alert when the certificate has fewer days left (default: 14)",
    "endpoints": 'JSON file mapping regions to "HOST:PORT" to check instead',
    "ca-file": "CA bundle to verify lab certificates against (PEM)",
}


def _targets(region, config, endpoints, ca_file):
    from fleet import monitor, regions

    try:
        fleet = regions.load(config)
        selected = fleet.select(region)
        overrides = monitor.read_endpoints(Path(endpoints) if endpoints else None)
    except (FleetError, ValueError) as error:
        raise Exit(str(error), code=2) from error
    ca = Path(ca_file) if ca_file else None
    targets = [monitor.target_for(fleet, r, overrides, ca) for r in selected]
    return fleet, selected, targets


@task(help=MONITOR_HELP)
def monitor(c, region="all", config=None, json=False, timeout=10, cert_days=14,
            endpoints=None, ca_file=None):
    """Check every box at its own address; exit 1 if any box is unhealthy."""
    from rich.console import Console

    from fleet import monitor as checks

    _, _, targets = _targets(region, config, endpoints, ca_file)
    results = checks.run(targets, float(timeout), float(cert_days))
    if json:
        print(checks.to_json(results))
    else:
        # Pipes and cron mail get a wide table instead of rich's 80 columns.
        Console(width=None if sys.stdout.isatty() else 160).print(
            checks.to_table(results)
        )

    sick = [r.region for r in results if not r.healthy]
    if sick:
        raise Exit(
            f"{len(sick)} of {len(results)} boxes unhealthy: {', '.join(sick)}; "
            "see the problems column (or run with --json) for each cause",
            code=1,
        )


@task(help={
    **{key: text for key, text in MONITOR_HELP.items() if key != "json"},
    "reports": "directory of the JUnit files and nightly/ (default: reports/ "
               "in the repository)",
    "history": "number of runs kept in nightly/history.json (default: 30)",
})
def nightly(c, region="all", config=None, timeout=10, cert_days=14,
            endpoints=None, ca_file=None, reports=None, history=30):
    """Run the infra suite on every region at once plus the monitor; write HTML.

    Exits 0 when every region is green, 1 when any is red, 2 on bad input.
    """
    from fleet import monitor as checks
    from fleet import nightly as runs
    from fleet.regions import REPO_ROOT

    # The infra step writes its JUnit files under the repository's reports/.
    reports = Path(reports) if reports else REPO_ROOT / "reports"
    fleet, selected, targets = _targets(region, config, endpoints, ca_file)
    record = runs.run(
        fleet,
        selected,
        reports,
        lambda: checks.run(targets, float(timeout), float(cert_days)),
        history_size=int(history),
    )

    page = reports / "nightly" / "index.html"
    for entry in record["regions"]:
        state = "green" if entry["green"] else "RED  "
        print(f"{state} {entry['region']}: {'; '.join(entry['problems']) or 'ok'}")
    print(f"report: {page} ({record['seconds']} s)")
    if not record["green"]:
        red = [e["region"] for e in record["regions"] if not e["green"]]
        raise Exit(f"nightly run red for: {', '.join(red)}; details in {page}",
                   code=runs.EXIT_RED)


LAB_CONFIG = "lab/multibox.toml"


@task(help={
    "config": f"regions file of the lab boxes (default: {LAB_CONFIG})",
    "net": "lab network file: delays, front addresses, resolver (default: "
           "lab/labnet.toml)",
})
def multilab_up(c, config=LAB_CONFIG, net="lab/labnet.toml"):
    """Start the multi-box lab's delaying proxies and latency resolver."""
    from fleet import multilab, regions

    try:
        spec = multilab.up(regions.load(config), Path(net))
    except FleetError as error:
        raise Exit(str(error), code=2) from error
    for proxy in spec["proxies"]:
        print(f"{proxy['name']:24} {proxy['listen']:22} -> {proxy['upstream']:22} "
              f"+{proxy['up_ms']:g}/{proxy['down_ms']:g} ms")
    print(f"resolver: dig @{spec['dns'].replace(':', ' -p ')} {spec['domain']}")
    print(f"monitor through the proxies: invoke monitor --config {config} "
          f"--endpoints {multilab.STATE_DIR / 'endpoints.json'}")


@task
def multilab_down(c):
    """Stop the multi-box lab's proxies and resolver."""
    from fleet import multilab

    print("stopped" if multilab.down() else "the lab network was not running")


@task
def multilab_status(c):
    """Show box health and latency as the lab resolver last measured them."""
    from fleet import multilab

    boxes = multilab.status()
    if not boxes:
        raise Exit("the lab network is not running; start it with "
                   "`invoke multilab-up`", code=1)
    for box in boxes:
        state = "healthy" if box["healthy"] else "DOWN"
        latency = box["latency_ms"]
        shown = f"{latency:.0f} ms" if latency is not None else "-"
        print(f"{box['name']:14} {box['address']:12} {state:8} {shown:>8} "
              f"{box['problem'] or ''}")
