"""Run the real `vagrant validate` on the Vagrantfile of every shipped region.

Missing provider plugins (vagrant-aws, vagrant-managed-servers) do not fail
validate: it checks Ruby syntax and Vagrant's core settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet import regions, render, vagrant
from fleet.images import Image

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(regions.load(REPO / "regions.toml").regions)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("vagrant") is None,
                       reason="vagrant is not installed (scripts/setup)"),
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Render every shipped region into a temporary copy of the repository layout."""
    root = tmp_path_factory.mktemp("fleet")
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "vatrates.pem"
    key.write_text("placeholder\n")
    key.chmod(0o600)
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        config = root / "regions.toml"
        shutil.copyfile(REPO / "regions.toml", config)
        fleet = regions.load(config)
        paths = {}
        for name, region in fleet.regions.items():
            image = None
            if region.provider == "aws":
                image = Image("ami-0a1b2c3d4e5f60718", "20241119", "test", "",
                              name, region.ubuntu, region.arch)
            paths[name], _ = render.render(fleet, region, image)
        yield paths, home
    finally:
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home


@pytest.mark.parametrize("name", SHIPPED)
def test_vagrant_validate(rendered, name):
    paths, home = rendered
    env = {**os.environ, **vagrant.vagrant_env(), "HOME": str(home)}
    result = subprocess.run(["vagrant", "validate"], cwd=paths[name].parent, env=env,
                            text=True, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_broken_vagrantfile_fails_validate(rendered, tmp_path):
    """The check can fail: a syntax error is caught by the same command."""
    paths, home = rendered
    broken = tmp_path / "Vagrantfile"
    broken.write_text(paths["local"].read_text().replace("end\nend\n", "end\n"))
    env = {**os.environ, **vagrant.vagrant_env(), "HOME": str(home)}
    result = subprocess.run(["vagrant", "validate"], cwd=tmp_path, env=env, text=True,
                            capture_output=True, timeout=120, check=False)
    assert result.returncode != 0
