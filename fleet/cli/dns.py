"""Tasks for running the fleet behind one name: dns, certs and sweep."""

from __future__ import annotations

from typing import Any

from invoke import Exit, task
from rich.console import Console
from rich.table import Table

from fleet.errors import FleetError

console = Console()


def _load(config: str | None) -> Any:
    from fleet import regions

    try:
        return regions.load(config or None)
    except FleetError as error:
        raise Exit(str(error), code=2) from None


def _aws_error(error: Exception, action: str) -> Exit:
    return Exit(f"{action} failed: {error}; check the AWS credentials "
                f"(AWS_PROFILE or AWS_ACCESS_KEY_ID) and permissions", code=1)


@task(
    iterable=["address"],
    help={
        "config": "regions file (default: $FLEET_CONFIG, else regions.toml)",
        "address": "a box's public address as REGION=IP; repeat for IPv6 or "
                   "more boxes (default: the manifest, else the ssh-config host)",
        "zone-id": "Route53 hosted zone id (default: the public zone that "
                   "contains the shared name)",
        "apply": "send the planned changes to Route53 (default: plan only)",
    },
)
def dns(c, config=None, address=None, zone_id=None, apply=False):
    """Plan (and with --apply make) the latency records for the shared name."""
    from botocore.exceptions import BotoCoreError, ClientError

    from fleet import dns as route53

    fleet = _load(config)
    client = route53.route53_client()
    try:
        overrides = route53.parse_address_options(address, fleet)
        planned, zone_name = route53.prepare(client, fleet, overrides, zone_id)
    except FleetError as error:
        raise Exit(str(error), code=2) from None
    except (BotoCoreError, ClientError) as error:
        raise _aws_error(error, "reading Route53") from None

    _print_plan(planned, zone_name)
    if planned.is_empty:
        console.print("No change: Route53 already matches the fleet.")
        return
    if not apply:
        console.print("Plan only; run again with --apply to make these changes.")
        return

    try:
        result = route53.apply(client, planned)
    except (BotoCoreError, ClientError) as error:
        raise _aws_error(error, "changing Route53") from None
    console.print(
        f"Applied: change {result.change_id or '-'}, "
        f"{len(result.created_checks)} health check(s) created, "
        f"{len(result.deleted_checks)} deleted."
    )


def _print_plan(planned: Any, zone_name: str) -> None:
    from fleet.dns import describe_value

    table = Table(title=f"{planned.domain} in zone {zone_name}")
    for column in ("action", "type", "set id", "latency region", "value",
                   "health check", "reason"):
        table.add_column(column)
    for change in planned.changes:
        record = change.record
        check = record.get("HealthCheckId") or (
            "(new)" if change.action == "CREATE" else "-")
        style = "red" if change.action == "DELETE" else "green"
        table.add_row(change.action, record["Type"], record.get("SetIdentifier", "-"),
                      record.get("Region", "-"), describe_value(record), check,
                      change.reason, style=style)
    for record in planned.unchanged:
        table.add_row("keep", record["Type"], record.get("SetIdentifier", "-"),
                      record.get("Region", "-"), describe_value(record),
                      record.get("HealthCheckId", "-"), "no change", style="dim")
    console.print(table)
    for region, config in planned.new_checks.items():
        console.print(f"health check to create for {region}: HTTPS "
                      f"{config['IPAddress']}:{config['Port']}{config['ResourcePath']} "
                      f"SNI {config['FullyQualifiedDomainName']}")
    for check_id in planned.stale_checks:
        console.print(f"health check to delete after the change: {check_id}")
    for reason in planned.skipped:
        console.print(f"[yellow]skipped[/] {reason}")
