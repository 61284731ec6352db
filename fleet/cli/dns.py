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
    for warning in planned.warnings:
        console.print(f"[yellow]warning[/] {warning}")


@task(
    iterable=["address"],
    help={
        "config": "regions file (default: $FLEET_CONFIG, else regions.toml)",
        "region": "boxes to install on: NAME, a,b or all (default: all)",
        "directory": "ACME directory URL (default: Let's Encrypt production; "
                     "'staging' for Let's Encrypt staging)",
        "email": "contact address for the ACME account (optional)",
        "cert-dir": "where the account key and the certificate are kept "
                    "(default: .cache/certs in the repository)",
        "ca-bundle": "CA file to trust for the ACME directory's HTTPS (Pebble)",
        "renew-days": "renew when fewer days than this remain (default: 30)",
        "renew-if-due": "scheduled mode: issue only when due, and install only "
                        "on boxes that do not already serve the certificate",
        "force": "issue a new certificate even if the kept one is not due",
        "app": "Dokku app to add the certificate to (default: the project name)",
        "address": "a box's address as REGION=IP for the external check "
                   "(default: the manifest, else the ssh-config host)",
        "zone-id": "Route53 hosted zone id for the TXT record (default: the "
                   "public zone that contains the shared name)",
    },
)
def certs(c, config=None, region="all", directory=None, email="", cert_dir=None,
          ca_bundle=None, renew_days=None, renew_if_due=False, force=False,
          app=None, address=None, zone_id=None):
    """Issue the shared certificate by DNS-01, install it on every box, verify."""
    from botocore.exceptions import BotoCoreError, ClientError

    from fleet import certs as acme
    from fleet import dns as route53

    fleet = _load(config)
    settings = _cert_settings(fleet, directory, email, cert_dir, ca_bundle,
                              renew_days)
    try:
        overrides = route53.parse_address_options(address, fleet)
        targets, skipped = acme.box_targets(
            fleet, fleet.select(region), route53.box_addresses(fleet, overrides),
            app or fleet.project.name)
    except FleetError as error:
        raise Exit(str(error), code=2) from None

    def zone() -> tuple[Any, str]:
        client = route53.route53_client()
        found, _ = route53.find_zone(client, fleet.project.domain, zone_id)
        return client, found

    try:
        outcome = acme.ensure(fleet.project.domain, settings, zone, targets,
                              force=force, only_where_needed=renew_if_due)
    except FleetError as error:
        raise Exit(str(error), code=1) from None
    except (BotoCoreError, ClientError) as error:
        raise _aws_error(error, "writing the TXT record in Route53") from None

    _print_certs(outcome, skipped, settings)
    if not outcome.ok:
        raise Exit("some boxes do not serve the certificate; see the table above, "
                   "fix the box and run `invoke certs` again", code=1)


def _cert_settings(fleet: Any, directory: str | None, email: str,
                   cert_dir: str | None, ca_bundle: str | None,
                   renew_days: Any) -> Any:
    from pathlib import Path

    from fleet import certs as acme
    from fleet.regions import REPO_ROOT

    named = {None: acme.LETS_ENCRYPT, "production": acme.LETS_ENCRYPT,
             "staging": acme.LETS_ENCRYPT_STAGING}
    url = named.get(directory, directory)
    if not url.startswith("https://"):
        raise Exit(f"--directory {directory!r} is not an https:// URL; pass the "
                   f"ACME directory URL, 'production' or 'staging'", code=2)
    try:
        days = int(renew_days) if renew_days is not None else acme.RENEW_DAYS
    except ValueError:
        raise Exit(f"--renew-days {renew_days!r} is not a whole number of days",
                   code=2) from None
    if not 1 <= days <= 89:
        raise Exit(f"--renew-days {days} is out of range; use 1-89 (certificates "
                   f"from Let's Encrypt last 90 days)", code=2)
    if ca_bundle and not Path(ca_bundle).is_file():
        raise Exit(f"--ca-bundle {ca_bundle}: file not found", code=2)
    # The repository's .cache/ is git-ignored, whichever regions file is used.
    base = Path(cert_dir).expanduser() if cert_dir else (
        REPO_ROOT / ".cache" / "certs")
    return acme.Settings(directory_url=url, cert_dir=base, email=email,
                         renew_days=days, ca_bundle=ca_bundle)


def _print_certs(outcome: Any, skipped: list[str], settings: Any) -> None:
    kept = outcome.kept
    verb = "Issued" if outcome.issued else "Kept"
    console.print(
        f"{verb} certificate for {kept.domain}: valid until "
        f"{kept.not_after:%Y-%m-%d %H:%M} UTC ({kept.days_left():.0f} days), "
        f"sha256 {kept.fingerprint[:16]}... ({outcome.reason}); "
        f"files in {settings.cert_dir / kept.domain}"
    )
    table = Table(title="Certificate on each box (checked from here, by SNI)")
    for column in ("box", "action", "serves it", "detail"):
        table.add_column(column)
    for box in outcome.boxes:
        mark = "[green]yes[/]" if box.verdict.ok else "[red]no[/]"
        table.add_row(box.region, box.action, mark, box.verdict.detail)
    console.print(table)
    for reason in skipped:
        console.print(f"[yellow]skipped[/] {reason}")


@task(
    iterable=["aws_region"],
    help={
        "config": "regions file (default: $FLEET_CONFIG, else regions.toml)",
        "aws-region": "another AWS region to scan, besides those of the regions "
                      "file and the manifests; repeat for more",
        "apply": "delete what is listed (default: list only)",
    },
)
def sweep(c, config=None, aws_region=None, apply=False):
    """List (and with --apply delete) tagged cloud resources no manifest owns."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from fleet import dns as route53
    from fleet import sweep as cleanup

    fleet = _load(config)

    def ec2(name: str) -> Any:
        return boto3.client("ec2", region_name=name)

    client = route53.route53_client()
    try:
        leftovers = cleanup.find_leftovers(fleet, ec2, client, aws_region)
    except FleetError as error:
        raise Exit(str(error), code=2) from None
    except (BotoCoreError, ClientError) as error:
        raise _aws_error(error, "listing tagged resources") from None

    if not leftovers:
        console.print(f"No leftovers: every resource tagged project="
                      f"{fleet.project.name} is in a manifest.")
        return
    table = Table(title=f"Tagged project={fleet.project.name}, in no manifest")
    for column in ("kind", "id", "AWS region", "region tag", "run tag", "detail"):
        # Ids are copied into consoles and scripts: never cut them short.
        longest = max(len(item.id) for item in leftovers) if column == "id" else 0
        table.add_column(column, no_wrap=column == "id", min_width=longest or None)
    for item in leftovers:
        table.add_row(item.kind, item.id, item.aws_region, item.tags.get("region", "-"),
                      item.tags.get("run", "-"), item.detail)
    console.print(table)
    if not apply:
        console.print("List only; run again with --apply to delete these.")
        return

    results = cleanup.delete_leftovers(leftovers, ec2, client)
    failed = [r for r in results if not r.ok]
    for result in failed:
        console.print(f"[red]failed[/] {result.item.kind} {result.item.id}: "
                      f"{result.message}")
    console.print(f"Deleted {len(results) - len(failed)} of {len(results)}.")
    if failed:
        raise Exit("some leftovers could not be deleted; see above and run "
                   "`invoke sweep --apply` again", code=1)
