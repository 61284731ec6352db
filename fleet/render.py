"""Render Vagrantfile.j2 into boxes/<region>/Vagrantfile.

The output depends only on the region settings and the resolved image, so
rendering twice gives byte-identical files. The run id is not written: it
reaches the cloud tags through the VATFLEET_RUN environment variable when
`vagrant up` runs.
Render fails fast on what would make Vagrant hang later (a missing or
world-readable private key) and refuses output that looks like a credential.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import jinja2

from fleet.errors import RenderError
from fleet.images import Image, resolve_ami, volume_type
from fleet.regions import REPO_ROOT, Fleet, Region

TEMPLATE = REPO_ROOT / "Vagrantfile.j2"
LAB_KEY = REPO_ROOT / ".lab" / "ssh" / "id_ed25519"
RUN_ENV = "VATFLEET_RUN"

# docker run options that let systemd run as PID 1 without --privileged.
DOCKER_CREATE_ARGS = (
    ("--cap-add", "SYS_ADMIN"),
    ("--cap-add", "NET_ADMIN"),
    ("--security-opt", "seccomp=unconfined"),
    ("--security-opt", "apparmor=unconfined"),
    ("--tmpfs", "/run"),
    ("--tmpfs", "/run/lock"),
    ("-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"),
)

# Shapes of secrets that must never reach a rendered file: AWS access key
# ids, private key blocks, and assignments of secret-looking settings.
_SECRET_PATTERNS = (
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(secret_access_key|session_token|access_key_id|secret_key|"
               r"password)\s*=", re.IGNORECASE),
    re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"),
)


def ruby_string(value: Any) -> str:
    """Quote a value as a Ruby double-quoted string literal."""
    text = str(value)
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("#", "\\#")
    text = text.replace("\n", "\\n")
    return f'"{text}"'


def comment_text(value: Any) -> str:
    """Escape a value for a Ruby `#` comment: control characters become visible.

    A line break would end the comment and make the rest of the value Ruby
    code that Vagrant runs, and a config file name or a catalogue serial can
    hold one.
    """
    text = str(value)
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["rb"] = ruby_string
    return env


def check_private_key(region: Region) -> None:
    """Raise RenderError unless the region's private key exists with mode 0600."""
    path = region.private_key_path
    if path is None:
        raise RenderError(f"[regions.{region.name}] sets no private_key; add the "
                          f"path of the SSH key the box accepts")
    if not path.is_absolute():
        # Vagrant resolves a relative key path against the Vagrantfile.
        path = region.box_dir / path
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise RenderError(
            f"[regions.{region.name}] private_key {region.private_key} not found "
            f"({path}); create it (mode 0600) or set private_key to your key. "
            f"Without it Vagrant waits for SSH until it times out"
        ) from None
    if not path.is_file():
        raise RenderError(f"[regions.{region.name}] private_key {path} is not a file")
    if mode & 0o077:
        raise RenderError(
            f"[regions.{region.name}] private_key {path} has mode {mode:04o}; ssh "
            f"rejects keys others can read: run chmod 600 {path}"
        )


def context(fleet: Fleet, region: Region, image: Image | None = None,
            cache_dir: Path | None = None) -> dict[str, Any]:
    """Collect the template variables of one region."""
    values: dict[str, Any] = {
        "name": region.name,
        "provider": region.provider,
        "config_name": comment_text(fleet.path.name),
        "machine_label": f"{fleet.project.name}-{region.name}",
    }

    if region.provider == "aws":
        check_private_key(region)
        if image is None:
            kwargs = {"cache_dir": cache_dir} if cache_dir else {}
            image = resolve_ami(region, **kwargs)
        values.update(
            ami=image.id,
            image_source=comment_text(image.source),
            image_serial=comment_text(image.serial or ""),
            size=region.size,
            key_pair=region.key_pair,
            security_group=security_group_name(fleet, region),
            disk_gb=region.disk_gb,
            volume_type=volume_type(region.ubuntu).removeprefix("ebs-"),
            private_key=region.private_key,
            tags=[
                ("Name", ruby_string(f"{fleet.project.name}-{region.name}")),
                ("project", ruby_string(fleet.project.name)),
                ("region", ruby_string(region.name)),
                ("run", f'ENV.fetch("{RUN_ENV}", "manual")'),
            ],
        )
    elif region.provider == "scaleway":
        check_private_key(region)
        values.update(private_key=region.private_key)
    elif region.provider == "virtualbox":
        values.update(box=region.box, private_ip=region.private_ip,
                      memory_mb=region.memory_mb, cpus=region.cpus)
    elif region.provider == "docker":
        create_args = [*DOCKER_CREATE_ARGS, ("--memory", f"{region.memory_mb}m"),
                       ("--cpus", str(region.cpus))]
        values.update(
            image=region.image,
            lab_key=os.path.relpath(LAB_KEY, region.box_dir),
            ssh_port=region.ssh_port,
            http_port=region.http_port,
            https_port=region.https_port,
            create_args=create_args,
        )
    return values


def security_group_name(fleet: Fleet, region: Region) -> str:
    return f"{fleet.project.name}-{region.name}"


def render_text(fleet: Fleet, region: Region, image: Image | None = None,
                cache_dir: Path | None = None) -> str:
    """Return the Vagrantfile text of one region."""
    if not TEMPLATE.exists():
        raise RenderError(f"template {TEMPLATE} not found")
    values = context(fleet, region, image, cache_dir)
    try:
        text = _environment().get_template(TEMPLATE.name).render(**values)
    except jinja2.TemplateError as error:
        raise RenderError(f"{TEMPLATE.name}: {error}") from None
    check_no_secret(text, region)
    return text


def check_no_secret(text: str, region: Region) -> None:
    """Raise RenderError if the rendered text looks like it contains a credential."""
    for pattern in _SECRET_PATTERNS:
        match = pattern.search(text)
        if match:
            raise RenderError(
                f"rendered Vagrantfile for {region.name} contains what looks like "
                f"a credential ({pattern.pattern[:30]}...); remove it from the "
                f"region settings and pass secrets through the environment"
            )


def render(fleet: Fleet, region: Region, image: Image | None = None,
           cache_dir: Path | None = None) -> tuple[Path, bool]:
    """Write boxes/<region>/Vagrantfile; return its path and whether it changed."""
    text = render_text(fleet, region, image, cache_dir)
    path = region.box_dir / "Vagrantfile"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return path, False
    region.box_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name("Vagrantfile.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return path, True
