"""The `box` step: build the lab box image `vatfleet-box:bookworm` locally.

No image registry is involved. debootstrap makes a Debian 12 minbase root
file system once, cached as a tarball in `.cache/box/`, which is imported
into the Docker engine as `vatfleet-base:bookworm`. `docker build` then adds
systemd as PID 1, sshd, cron, sudo and a `vagrant` user whose authorized key
is this checkout's `.lab/ssh/id_ed25519.pub`.

The image carries a label with a SHA-256 over every input (the files in
`box/`, the public key, the suite and variant), so the step rebuilds only
when one of them changes.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.errors import FleetError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
BOX_DIR = REPO_ROOT / "box"
CACHE_DIR = REPO_ROOT / ".cache" / "box"
KEY_PATH = REPO_ROOT / ".lab" / "ssh" / "id_ed25519"

SUITE = "bookworm"
VARIANT = "minbase"
BASE_IMAGE = f"vatfleet-base:{SUITE}"
IMAGE = f"vatfleet-box:{SUITE}"
INPUTS_LABEL = "org.vatfleet.box.inputs"

Runner = Callable[..., subprocess.CompletedProcess[str]]


def ensure_key(key_path: Path = KEY_PATH) -> tuple[Path, bool]:
    """Generate the per-checkout SSH key pair if it is missing.

    Returns the private key path and whether a new pair was made.
    """
    if key_path.exists() and key_path.with_suffix(".pub").exists():
        return key_path, False

    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.chmod(0o700)
    key_path.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vatfleet-lab",
         "-f", str(key_path)],
        check=True, capture_output=True, text=True, timeout=30,
    )
    log.info("event=key_generated path=%s", key_path)
    return key_path, True


def input_files(box_dir: Path = BOX_DIR) -> list[Path]:
    """List the files that go into the image build, in a stable order."""
    return sorted(p for p in box_dir.rglob("*") if p.is_file())


def inputs_hash(box_dir: Path = BOX_DIR, key_path: Path = KEY_PATH) -> str:
    """Hash every input of the image: box/ files, public key, suite, variant."""
    digest = hashlib.sha256()
    digest.update(f"suite={SUITE}\nvariant={VARIANT}\n".encode())
    for path in input_files(box_dir):
        digest.update(str(path.relative_to(box_dir)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(key_path.with_suffix(".pub").read_bytes())
    return digest.hexdigest()


def image_label(run: Runner, image: str, label: str) -> str | None:
    """Return an image's label value, or None if the image does not exist."""
    result = run(
        ["docker", "image", "inspect", "--format",
         f'{{{{ index .Config.Labels "{label}" }}}}', image],
        check=False, timeout=60,
    )
    if result.returncode != 0:
        return None
    value = result.stdout.strip()
    return "" if value == "<no value>" else value


def image_exists(run: Runner, image: str) -> bool:
    result = run(["docker", "image", "inspect", image], check=False, timeout=60)
    return result.returncode == 0


def rootfs_tarball(run: Runner, cache_dir: Path = CACHE_DIR) -> Path:
    """Return the cached root file system tarball, running debootstrap once."""
    tarball = cache_dir / f"debian-{SUITE}-{VARIANT}.tar"
    if tarball.exists():
        return tarball

    if shutil.which("debootstrap") is None:
        raise FleetError(
            "debootstrap is not installed; run scripts/setup "
            "(or `apt-get install debootstrap`) and try again"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="rootfs.") as tmp:
        root = Path(tmp) / "root"
        log.info("event=debootstrap suite=%s variant=%s", SUITE, VARIANT)
        run(["debootstrap", f"--variant={VARIANT}", SUITE, str(root)],
            timeout=1800)
        partial = tarball.with_suffix(".tar.partial")
        run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."],
            timeout=600)
        partial.rename(tarball)
    return tarball


def ensure_base_image(run: Runner, cache_dir: Path = CACHE_DIR) -> bool:
    """Import the debootstrap root file system as the base image if missing.

    Returns whether the base image was (re)imported.
    """
    if image_exists(run, BASE_IMAGE):
        return False
    tarball = rootfs_tarball(run, cache_dir)
    log.info("event=docker_import image=%s", BASE_IMAGE)
    run(["docker", "import", str(tarball), BASE_IMAGE], timeout=900)
    return True


def build_image(run: Runner, digest: str, key_path: Path = KEY_PATH) -> None:
    """Run `docker build` on a context of box/ plus the public key."""
    with tempfile.TemporaryDirectory(prefix="vatfleet-box.") as tmp:
        context = Path(tmp)
        for path in input_files(BOX_DIR):
            target = context / path.relative_to(BOX_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        shutil.copy2(key_path.with_suffix(".pub"), context / "authorized_keys")
        log.info("event=docker_build image=%s inputs=%s", IMAGE, digest[:12])
        run(
            ["docker", "build", "--pull=false",
             "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
             "--label", f"{INPUTS_LABEL}={digest}",
             "--tag", IMAGE, str(context)],
            timeout=1800,
        )


def ensure_image(run: Runner) -> str:
    """Build the box image unless one with the same inputs exists.

    Returns a short note for the summary table.
    """
    _, new_key = ensure_key()
    digest = inputs_hash()
    current = image_label(run, IMAGE, INPUTS_LABEL)
    if current == digest:
        log.info("event=box_current image=%s inputs=%s", IMAGE, digest[:12])
        return "no change"

    reason = "missing" if current is None else "inputs changed"
    if new_key:
        reason = "new key"
    log.info("event=box_rebuild image=%s reason=%s", IMAGE, reason.replace(" ", "_"))
    imported = ensure_base_image(run)
    build_image(run, digest)
    note = f"built {IMAGE} ({reason})"
    return note + ", imported base" if imported else note


def run(ctx: Any) -> str:
    """Build the lab box image if its inputs changed (docker regions only)."""
    return ensure_image(ctx.run)
