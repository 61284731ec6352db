"""Tasks that build boxes: ami, render, up, provision, test, deploy, build,
status and destroy. Each takes --region NAME, a comma list, or all."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Exit, task
from rich.console import Console
from rich.table import Table

from fleet.errors import FleetError

console = Console()
errors = Console(stderr=True)

REGION_HELP = ("region to act on (default: local); a comma list such as "
               "eu-west-1,local acts on each region named, and all on every "
               "region in the regions file")
CONFIG_HELP = "regions file (default: $FLEET_CONFIG, else regions.toml)"
COMMON_HELP = {"region": REGION_HELP, "config": CONFIG_HELP}


def _load(config: str | None):
    from fleet import regions

    try:
        fleet = regions.load(config or None)
    except FleetError as error:
        raise Exit(str(error), code=2) from None
    for warning in fleet.warnings:
        errors.print(f"warning: {warning}", markup=False, highlight=False)
    return fleet


def _select(fleet, region: str):
    try:
        return fleet.select(region)
    except FleetError as error:
        raise Exit(str(error), code=2) from None


def _run(config: str | None, region: str, steps, *, keep: bool = False,
         title: str = "", clean_up: bool = False, fail_fast: bool = False,
         show_step: bool = True):
    """Run steps over the selected regions, print the table, exit on failure."""
    from fleet import pipeline
    from fleet.steps import destroy_unless_kept

    fleet = _load(config)
    selected = _select(fleet, region)
    report = pipeline.run_steps(
        fleet, selected, steps, keep=keep,
        on_failure=destroy_unless_kept if clean_up else None, fail_fast=fail_fast,
    )
    console.print(pipeline.summary_table(report, title, show_step=show_step))

    if report.failures:
        raise Exit(pipeline.failure_summary(report), code=1)
    return report


@task(help={
    **COMMON_HELP,
    "refresh": "download Canonical's aws.json into .cache/images/ first "
               "(needs network access to cloud-images.ubuntu.com)",
    "import-file": "copy a saved aws.json or releasesTable into the cache first",
    "offline": "never ask SSM, even with AWS credentials: use the cache",
})
def ami(c, region="local", config=None, refresh=False, import_file=None,
        offline=False):
    """Print the machine image of each region: id, serial, source and date."""
    from fleet import images

    fleet = _load(config)
    selected = _select(fleet, region)
    try:
        if import_file:
            path = images.import_catalogue(Path(import_file))
            errors.print(f"imported {import_file} into {path}")
        if refresh:
            path = images.refresh_catalogue()
            errors.print(f"downloaded {path}")
    except FleetError as error:
        raise Exit(str(error), code=1) from None

    table = Table()
    for column in ("region", "id", "serial", "source", "date"):
        table.add_column(column)
    failed = []
    for item in selected:
        try:
            image = _image_of(item, offline)
        except FleetError as error:
            failed.append(str(error))
            continue
        if isinstance(image, str):
            table.add_row(item.name, "-", "-", image, "-")
        else:
            table.add_row(item.name, image.id, image.serial or "-", image.source,
                          image.date or "-")

    # Without a single row the table would only push the error off screen.
    if table.row_count:
        console.print(table)
    if failed:
        raise Exit("\n".join(failed), code=1)


def _image_of(region, offline: bool):
    """Return the region's Image, or a note saying why there is none to show."""
    import os

    from fleet import images

    if region.provider == "aws":
        return images.resolve_ami(region, use_ssm=False if offline else None)
    if region.provider != "scaleway":
        return f"{region.provider}: image set in the Vagrantfile"
    if offline or not os.environ.get("SCW_SECRET_KEY"):
        return "scaleway: resolved per zone at `up` (needs SCW_SECRET_KEY)"

    from fleet import scaleway

    client = scaleway.InstanceClient.from_env()
    try:
        return images.scaleway_image(region, client)
    finally:
        client.close()


@task(help=COMMON_HELP)
def render(c, region="local", config=None):
    """Render boxes/<region>/Vagrantfile from Vagrantfile.j2."""
    from fleet import steps

    _run(config, region, [("render", steps.render)], title="render")


@task(help=COMMON_HELP)
def up(c, region="local", config=None):
    """Render, then create and boot each region's box."""
    from fleet import steps

    _run(config, region, [("render", steps.render), ("up", steps.up)], title="up")


@task(help=COMMON_HELP)
def provision(c, region="local", config=None):
    """Run the provisioning steps of each region's roles on its box."""
    from fleet import steps

    _run(config, region, [("provision", steps.provision)], title="provision")


@task(help=COMMON_HELP)
def deploy(c, region="local", config=None):
    """Deploy the API in app/ to each region's box."""
    from fleet import steps

    _run(config, region, [("deploy", steps.deploy)], title="deploy")


@task(name="test", help=COMMON_HELP)
def test_(c, region="local", config=None):
    """Run the infrastructure tests (tests/infra/) against each region's box."""
    from fleet import steps

    _run(config, region, [("test", steps.test)], title="test")


@task(help={**COMMON_HELP,
            "keep": "keep a box whose step failed, for inspection (default: "
                    "destroy it)"})
def build(c, region="local", config=None, keep=False):
    """Run box, render, up, provision, deploy and test; stop at the first failure."""
    from fleet import steps

    _run(config, region, steps.BUILD, keep=keep, title="build", clean_up=True,
         fail_fast=True)


@task(help=COMMON_HELP)
def status(c, region="local", config=None):
    """Print Vagrant's state of each region's box."""
    from fleet import steps

    _run(config, region, [("status", steps.status)], title="status", show_step=False)


@task(help={**COMMON_HELP, "yes": "do not ask for confirmation"})
def destroy(c, region="local", config=None, yes=False):
    """Destroy each region's box and the cloud resources in its manifest."""
    from fleet import steps

    fleet = _load(config)
    selected = _select(fleet, region)
    cloud = [r.name for r in selected if r.is_cloud]
    if cloud and not yes:
        if not sys.stdin.isatty():
            raise Exit(f"destroying cloud regions {', '.join(cloud)} needs --yes "
                       f"when not run from a terminal", code=2)
        answer = input(f"Destroy {', '.join(cloud)}? Type yes: ")
        if answer.strip() != "yes":
            raise Exit("not confirmed; nothing destroyed", code=1)
    _run(config, region, [("destroy", steps.destroy)], title="destroy",
         show_step=False)
