"""Static checks of the provisioning scripts and the helpers they share."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from fleet import provision

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    [*ROOT.glob("provision/*.sh"), *ROOT.glob("provision/files/vatfleet-*"),
     ROOT / "box" / "setup-image.sh"]
)
SHELL_SCRIPTS = [p for p in SCRIPTS if not p.name.endswith(".service")]
STEPS = sorted(p for p in ROOT.glob("provision/*.sh") if p.name != "lib.sh")


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed; scripts/setup installs it")
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
    result = subprocess.run(["shellcheck", "--severity=info", str(script)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", STEPS, ids=lambda p: p.name)
def test_step_is_strict_and_reports_changes(script):
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "finish" in text, "a step must end with finish (changed=N)"
    assert text.rstrip().endswith('main "$@"')


def run_lib(snippet: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "$1"; {snippet}', "step",
         str(ROOT / "provision" / "lib.sh")],
        capture_output=True, text=True, timeout=10, cwd=tmp_path, check=False,
    )


def test_put_file_changes_once(tmp_path):
    target = tmp_path / "conf"
    snippet = (f'put_file {target} 644 <<<"a=1" || true; '
               f'put_file {target} 644 <<<"a=1" || true; finish')
    result = run_lib(snippet, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("changed: wrote") == 1
    assert result.stdout.strip().endswith("changed=1")
    assert target.read_text() == "a=1\n"


def test_put_file_rewrites_changed_content(tmp_path):
    target = tmp_path / "conf"
    target.write_text("a=0\n")
    target.chmod(0o644)
    result = run_lib(f'put_file {target} 644 <<<"a=1" || true; finish', tmp_path)
    assert result.stdout.strip().endswith("changed=1")
    assert target.read_text() == "a=1\n"


def test_not_applicable_reports_no_change(tmp_path):
    result = run_lib('not_applicable "no Docker here"', tmp_path)
    assert result.returncode == 0
    assert "not applicable: no Docker here" in result.stdout
    assert result.stdout.strip().endswith("changed=0")


def region(provider: str, roles: list[str]) -> SimpleNamespace:
    return SimpleNamespace(name="r1", provider=provider, roles=roles)


def test_lab_boxes_get_lab_services_after_nginx():
    roles = ["base", "nginx", "dokku", "cleanup", "reboot"]
    assert provision.steps_for(region("docker", roles)) == [
        "base", "nginx", "lab-services", "dokku", "cleanup", "reboot"]
    assert provision.steps_for(region("aws", roles)) == roles


def test_unknown_role_names_the_missing_script():
    with pytest.raises(Exception, match=r"provision/nosuch\.sh"):
        provision.steps_for(region("aws", ["base", "nosuch"]))
