"""The `deploy` step: ship app/ to a region's box.

Cloud and VirtualBox boxes get a `git push` of the assembled app tree to
Dokku, which builds it with the Procfile and checks `/readyz` from app.json
before it switches traffic. Docker (lab) boxes cannot run Dokku, so the same
tree goes to `vatfleet-release`, which provision/lab-services.sh installs on
the box. That tool starts the Procfile's `web` process as a new systemd unit
beside the live one, switches nginx once the health check passes, then
stops the old one.

The release id is a hash of the tree, so deploying an unchanged app/ is a
no-op on both paths.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shlex
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.provision import Remote, remote_for

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_DIR = REPO_ROOT / "app"
REQUIRED_FILES = ("Procfile", "requirements.txt")
SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", "node_modules"}
RELEASE_TIMEOUT = 1200.0
_CHANGED_LINE = re.compile(r"^changed=(\d+)$", re.MULTILINE)
# A fixed commit date makes the same tree give the same commit, so pushing
# an unchanged app/ finds Dokku up to date.
FIXED_GIT_DATE = "2000-01-01T00:00:00+0000"


def app_files(app_dir: Path = APP_DIR) -> list[Path]:
    """List the files of the app tree, sorted, without caches."""
    files = []
    for path in sorted(app_dir.rglob("*")):
        relative = path.relative_to(app_dir)
        if not path.is_file() or SKIPPED_PARTS.intersection(relative.parts):
            continue
        if path.suffix in (".pyc", ".pyo"):
            continue
        files.append(path)
    return files


def check_app_tree(app_dir: Path = APP_DIR) -> None:
    missing = [name for name in REQUIRED_FILES if not (app_dir / name).is_file()]
    if missing:
        raise FleetError(
            f"{app_dir / missing[0]} not found; the app tree needs a Procfile "
            f"with a web process and a requirements.txt to deploy"
        )


def release_id(app_dir: Path = APP_DIR) -> str:
    """Hash the app tree (paths, modes and contents) into a short release id."""
    digest = hashlib.sha256()
    for path in app_files(app_dir):
        digest.update(str(path.relative_to(app_dir)).encode() + b"\0")
        digest.update(b"x" if os.access(path, os.X_OK) else b"-")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def app_tarball(target: Path, app_dir: Path = APP_DIR) -> None:
    """Write the app tree as a gzip tarball with stable owners and times."""
    with tarfile.open(target, "w:gz") as archive:
        for path in app_files(app_dir):
            data = path.read_bytes()
            info = tarfile.TarInfo(str(path.relative_to(app_dir)))
            info.size = len(data)
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            archive.addfile(info, io.BytesIO(data))


def deploy_lab(ctx: Any, remote: Remote) -> str:
    """Hand the tree to vatfleet-release on a lab box; return the note."""
    release = release_id()
    bundle_remote = f"/tmp/vatfleet-app-{release}.tar.gz"
    with tempfile.TemporaryDirectory(prefix="vatfleet-app.") as tmp:
        bundle = Path(tmp) / "app.tar.gz"
        app_tarball(bundle)
        ctx.run(remote.scp(bundle, bundle_remote), timeout=300)
    quoted = shlex.quote(bundle_remote)
    result = ctx.run(
        remote.ssh(f"sudo /usr/local/sbin/vatfleet-release {quoted} "
                   f"{shlex.quote(release)}; status=$?; rm -f {quoted}; "
                   f"exit $status"),
        timeout=RELEASE_TIMEOUT,
    )
    counts = _CHANGED_LINE.findall(result.stdout)
    if not counts:
        raise FleetError(f"vatfleet-release printed no changed=N line; see "
                         f"{ctx.log_path}")
    log.info("event=deployed region=%s release=%s changed=%s", ctx.region.name,
             release, counts[-1])
    return "no change" if counts[-1] == "0" else f"released {release}"


def assemble_repository(ctx: Any, work: Path) -> None:
    """Commit the app tree as the root of a fresh git repository in `work`."""
    for path in app_files():
        target = work / path.relative_to(APP_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        target.chmod(0o755 if os.access(path, os.X_OK) else 0o644)
    env = {
        "GIT_AUTHOR_NAME": "vatfleet", "GIT_AUTHOR_EMAIL": "deploy@vatfleet.invalid",
        "GIT_COMMITTER_NAME": "vatfleet",
        "GIT_COMMITTER_EMAIL": "deploy@vatfleet.invalid",
        "GIT_AUTHOR_DATE": FIXED_GIT_DATE, "GIT_COMMITTER_DATE": FIXED_GIT_DATE,
    }
    ctx.run(["git", "init", "-q", "-b", "master", str(work)], timeout=60)
    ctx.run(["git", "-C", str(work), "add", "-A"], timeout=60)
    ctx.run(["git", "-C", str(work), "commit", "-q", "-m",
             f"Release {release_id()}"], env=env, timeout=60)


def deploy_dokku(ctx: Any, remote: Remote) -> str:
    """Push the tree to Dokku over the box's ssh-config; return the note."""
    app = ctx.fleet.project.name
    with tempfile.TemporaryDirectory(prefix="vatfleet-push.") as tmp:
        work = Path(tmp)
        assemble_repository(ctx, work)
        ssh = f"ssh -F {shlex.quote(str(remote.config))} -o BatchMode=yes"
        result = ctx.run(
            ["git", "-C", str(work), "push", "--porcelain",
             f"dokku@{remote.host}:{app}", "HEAD:refs/heads/master"],
            env={"GIT_SSH_COMMAND": ssh}, timeout=RELEASE_TIMEOUT,
        )
    output = result.stdout + result.stderr
    if "[up to date]" in output or "Everything up-to-date" in output:
        return "no change"
    return f"pushed {release_id()} to Dokku"


def run(ctx: Any) -> str:
    """Deploy app/ to the region's box; return a note for the summary."""
    check_app_tree()
    remote = remote_for(ctx)
    if ctx.region.provider == "docker":
        return deploy_lab(ctx, remote)
    return deploy_dokku(ctx, remote)
