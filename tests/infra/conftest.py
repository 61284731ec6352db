"""Fixtures of the infra suite, which testinfra runs against one box.

`invoke test` (fleet/infra.py) runs it as
`pytest tests/infra --hosts=ssh://REGION --ssh-config=PATH` with the region
and config in VATFLEET_REGION and FLEET_CONFIG. Without --hosts (a plain
`pytest` of the whole tree) every test here is skipped, because testinfra
would otherwise check the machine pytest runs on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from fleet import regions

LAB_PROVIDER = "docker"


@dataclass(frozen=True)
class Box:
    """The region and fleet settings of the box under test."""

    region: regions.Region
    fleet: regions.Fleet

    @property
    def is_lab(self) -> bool:
        return self.region.provider == LAB_PROVIDER

    @property
    def hosts_primary(self) -> bool:
        from fleet.provision import hosts_primary

        return hosts_primary(self.fleet, self.region)


@pytest.fixture(autouse=True)
def _require_hosts(request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("hosts", default=None):
        pytest.skip("infra checks need a box: run `invoke test --region NAME`")


@pytest.fixture(scope="session")
def box(request: pytest.FixtureRequest) -> Box:
    name = os.environ.get("VATFLEET_REGION", "")
    if not name:
        pytest.skip("VATFLEET_REGION is not set: run `invoke test --region NAME`")
    fleet = regions.load(os.environ.get("FLEET_CONFIG") or None)
    return Box(fleet.regions[name], fleet)


@pytest.fixture
def lab_only(box: Box) -> None:
    if not box.is_lab:
        pytest.skip("lab stand-in check; Dokku runs the app on this box")


@pytest.fixture
def dokku_only(box: Box) -> None:
    if box.is_lab:
        pytest.skip("not applicable in the lab: Dokku cannot be installed on a "
                    "lab box (its package repository is out of reach)")

