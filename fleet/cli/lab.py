"""Lab tasks: the box image that docker regions boot from."""

from __future__ import annotations

from invoke import Exit, task

from fleet.cli.core import COMMON_HELP, _load, _run


@task(help={**COMMON_HELP,
            "region": "docker region whose run log records the build "
                      "(default: local)"})
def box(c, region="local", config=None):
    """Build the lab box image vatfleet-box:bookworm if its inputs changed."""
    from fleet import steps

    fleet = _load(config)
    chosen = fleet.regions.get(region)
    if chosen is None or chosen.provider != "docker":
        docker = [name for name, r in fleet.regions.items() if r.provider == "docker"]
        raise Exit(
            f"--region {region} is not a docker region in {fleet.path}; "
            f"choose one of: {', '.join(docker) or 'none (add one)'}",
            code=2,
        )
    _run(config, region, [("box", steps.box)], title="box")
