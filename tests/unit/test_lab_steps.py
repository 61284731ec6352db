"""Pure parts of the lab steps: input hashes, release ids, report counts."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from fleet import box, deploy, infra
from fleet.errors import FleetError


def make_app(root: Path) -> Path:
    app = root / "app"
    (app / "sync").mkdir(parents=True)
    (app / "Procfile").write_text("web: uvicorn app.main:app --port $PORT\n")
    (app / "requirements.txt").write_text("starlette\n")
    (app / "main.py").write_text("app = None\n")
    (app / "sync" / "store.py").write_text("STORE = 1\n")
    return app


def test_release_id_is_stable(tmp_path):
    app = make_app(tmp_path)
    assert deploy.release_id(app) == deploy.release_id(app)
    assert len(deploy.release_id(app)) == 12


def test_release_id_follows_content(tmp_path):
    app = make_app(tmp_path)
    before = deploy.release_id(app)
    (app / "main.py").write_text("app = 1\n")
    assert deploy.release_id(app) != before


def test_release_id_ignores_caches(tmp_path):
    app = make_app(tmp_path)
    before = deploy.release_id(app)
    (app / "__pycache__").mkdir()
    (app / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (app / "sync" / "store.pyc").write_bytes(b"\0")
    assert deploy.release_id(app) == before


def test_app_tarball_skips_caches(tmp_path):
    app = make_app(tmp_path)
    (app / "__pycache__").mkdir()
    (app / "__pycache__" / "x.pyc").write_bytes(b"\0")
    target = tmp_path / "app.tar.gz"
    deploy.app_tarball(target, app)
    with tarfile.open(target) as archive:
        names = sorted(archive.getnames())
    assert names == ["Procfile", "main.py", "requirements.txt", "sync/store.py"]


def test_app_tree_needs_procfile(tmp_path):
    app = make_app(tmp_path)
    (app / "Procfile").unlink()
    with pytest.raises(FleetError, match="Procfile"):
        deploy.check_app_tree(app)


def test_box_hash_follows_inputs(tmp_path):
    box_dir = tmp_path / "box"
    box_dir.mkdir()
    (box_dir / "Dockerfile").write_text("FROM base\n")
    key = tmp_path / "id_ed25519"
    key.with_suffix(".pub").write_text("ssh-ed25519 AAAA one\n")
    first = box.inputs_hash(box_dir, key)
    assert box.inputs_hash(box_dir, key) == first

    (box_dir / "Dockerfile").write_text("FROM base\nRUN true\n")
    second = box.inputs_hash(box_dir, key)
    assert second != first

    key.with_suffix(".pub").write_text("ssh-ed25519 AAAA two\n")
    assert box.inputs_hash(box_dir, key) != second


def test_box_key_made_once(tmp_path):
    key = tmp_path / "ssh" / "id_ed25519"
    path, made = box.ensure_key(key)
    assert made is True
    assert path.exists()
    assert key.with_suffix(".pub").read_text().startswith("ssh-ed25519 ")
    assert (key.parent.stat().st_mode & 0o777) == 0o700
    _, made_again = box.ensure_key(key)
    assert made_again is False


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="5" tests="21">
</testsuite></testsuites>"""


def test_report_counts(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(JUNIT)
    result = infra.read_report(report)
    assert (result.tests, result.failures, result.skipped) == (21, 1, 5)
    assert result.passed == 15
    assert result.ok is False


def test_report_missing_is_an_error(tmp_path):
    with pytest.raises(FleetError, match="cannot read the infra report"):
        infra.read_report(tmp_path / "missing.xml")


def test_infra_argv_uses_absolute_ssh_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = infra.pytest_argv("local", Path("boxes/local/ssh-config"),
                             tmp_path / "junit.xml")
    assert "--hosts=ssh://local" in argv
    option = next(a for a in argv if a.startswith("--ssh-config="))
    assert Path(option.split("=", 1)[1]).is_absolute()


def test_lab_database_url_override(tmp_path):
    """A couchdb_url file from multilab-up wins over asking the primary box."""
    from types import SimpleNamespace

    from fleet import provision, regions

    repo = Path(__file__).resolve().parents[2]
    config = tmp_path / "multibox.toml"
    config.write_text((repo / "lab" / "multibox.toml").read_text())
    fleet = regions.load(config)
    region = fleet.regions["lab-west"]
    region.box_dir.mkdir(parents=True)
    url = "http://admin:secret@172.17.0.1:15985/users"
    (region.box_dir / "couchdb_url").write_text(url + "\n")
    ctx = SimpleNamespace(fleet=fleet, region=region)

    assert provision.primary_database_url(ctx) == url
