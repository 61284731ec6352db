"""The build steps, each `run(ctx) -> note`, in the order `invoke build` runs them.

render, up, status and destroy live here. box, provision, deploy and test
come from fleet.box, fleet.provision, fleet.deploy and fleet.infra, imported
only when their step runs, so a missing module fails that step alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from fleet.errors import FleetError
from fleet.pipeline import Step, StepContext, StepFailed
from fleet.vagrant import Machine


def _fail(ctx: StepContext, error: Exception) -> StepFailed:
    ctx.log(f"! {error}")
    return StepFailed(ctx.step, ctx.region.name, ctx.log_path, str(error))


def _delegate(module_name: str, docker_only: bool = False) -> Step:
    def step(ctx: StepContext) -> str:
        if docker_only and ctx.region.provider != "docker":
            return "not needed"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            raise _fail(ctx, FleetError(f"{module_name} is not available ({error})"))
        try:
            return module.run(ctx)
        except FleetError as error:
            raise _fail(ctx, error) from None

    step.__name__ = f"run_{module_name.rsplit('.', 1)[-1]}"
    return step


def render(ctx: StepContext) -> str:
    """Render boxes/<region>/Vagrantfile."""
    from fleet import render as renderer

    try:
        path, changed = renderer.render(ctx.fleet, ctx.region)
    except FleetError as error:
        raise _fail(ctx, error) from None
    ctx.log(f"rendered {path} changed={changed}")
    return "rendered" if changed else "no change"


def up(ctx: StepContext) -> str:
    """Create the cloud resources the box needs, boot it, write its ssh-config."""
    region = ctx.region
    try:
        if region.provider == "aws":
            note = _up_aws(ctx)
        elif region.provider == "scaleway":
            note = _up_scaleway(ctx)
        else:
            note = Machine(region, ctx).up()
        Machine(region, ctx).ssh_config_path()
    except FleetError as error:
        raise _fail(ctx, error) from None
    return note


def _up_aws(ctx: StepContext) -> str:
    import boto3

    from fleet import ec2

    session = boto3.session.Session()
    ec2.ensure_key_pair(session, ctx.fleet, ctx.region, ctx.run_id)
    ec2.ensure_security_group(session, ctx.fleet, ctx.region, ctx.run_id)
    note = Machine(ctx.region, ctx).up()
    instance = ec2.record_instance(session, ctx.fleet, ctx.region, ctx.run_id)
    return f"{note} ({instance})" if instance else note


def _up_scaleway(ctx: StepContext) -> str:
    from fleet import scaleway

    client = scaleway.InstanceClient.from_env()
    try:
        server = scaleway.ensure_server(client, ctx.fleet, ctx.region, ctx.run_id)
    finally:
        client.close()
    ctx.log(f"server {server['id']} at {scaleway.public_address(server)}")
    return f"{Machine(ctx.region, ctx).up()} ({server['id']})"


def status(ctx: StepContext) -> str:
    """Return Vagrant's state of the region's machine."""
    try:
        return Machine(ctx.region, ctx).status()
    except FleetError as error:
        raise _fail(ctx, error) from None


def destroy(ctx: StepContext) -> str:
    """Destroy the machine and the cloud resources recorded in the manifest."""
    region = ctx.region
    notes = []
    try:
        notes.append(Machine(region, ctx).destroy())
        if region.provider == "aws":
            import boto3

            from fleet import ec2

            notes.extend(ec2.delete_recorded(boto3.session.Session(), ctx.fleet,
                                             region))
        elif region.provider == "scaleway":
            from fleet import scaleway

            client = scaleway.InstanceClient.from_env()
            try:
                notes.append(scaleway.terminate(client, ctx.fleet, region))
            finally:
                client.close()
    except FleetError as error:
        raise _fail(ctx, error) from None
    return "; ".join(notes)


def destroy_unless_kept(ctx: StepContext, failure: StepFailed) -> str:
    """Clean up after a failed step: destroy the box unless --keep was given."""
    if failure.step in ("box", "render"):
        return "nothing to clean up"
    if ctx.keep:
        return "box kept for inspection (--keep)"
    cleanup = StepContext(ctx.fleet, ctx.region, ctx.log_path.with_name("destroy.log"),
                          ctx.keep, "destroy", ctx.run_id)
    return f"box destroyed ({destroy(cleanup)})"


box = _delegate("fleet.box", docker_only=True)
provision = _delegate("fleet.provision")
deploy = _delegate("fleet.deploy")
test = _delegate("fleet.infra")

BUILD: list[tuple[str, Callable[[StepContext], str]]] = [
    ("box", box),
    ("render", render),
    ("up", up),
    ("provision", provision),
    ("deploy", deploy),
    ("test", test),
]
