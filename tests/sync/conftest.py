"""Fixtures for the sync tests: PouchDB Server processes and helpers."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from couch_peers import PouchServer, peers_missing

_db_names = itertools.count(1)


@pytest.fixture(scope="session")
def pouch_server():
    """One in-memory PouchDB Server for the session; tests use fresh dbs."""
    reason = peers_missing()
    if reason:
        pytest.fail(reason)
    server = PouchServer().start()
    yield server
    server.close()


@pytest.fixture
def db_name(pouch_server) -> str:
    name = f"users-{next(_db_names)}"
    pouch_server.create_db(name)
    return name
