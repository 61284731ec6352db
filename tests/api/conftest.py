"""Fixtures for the API tests: a real Redis, the app, users and keys."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from app.auth import new_user_documents
from app.main import create_app
from app.settings import Settings, parse_networks
from app.sync import open_store

from .servers import redis_server

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

# Limits small enough to reach in a test; "bulk" is for tests that send many
# requests and must never be limited.
TEST_PLANS = {
    "anonymous": {"requests_per_minute": 1, "burst": 5},
    "free": {"requests_per_minute": 1, "burst": 3},
    "bulk": {"requests_per_minute": 6_000_000, "burst": 100_000},
}


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def plans_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plans") / "plans.json"
    path.write_text(json.dumps(TEST_PLANS))
    return path


@pytest.fixture
def store():
    return open_store("memory")


@pytest.fixture
def add_user(store) -> Callable[..., tuple[str, str]]:
    """Create a user in the test store; return (key, user id)."""

    def add(plan: str = "bulk", email: str = "user@example.com") -> tuple[str, str]:
        key, docs = new_user_documents(email, plan)
        for doc in docs:
            store.put(doc)
        return key, docs[0]["_id"].removeprefix("user:")

    return add


@pytest.fixture
def make_client(
    redis_url: str, plans_path: Path, store
) -> Iterator[Callable[..., TestClient]]:
    """Build a started app; keyword arguments override Settings fields."""
    clients: list[TestClient] = []

    def build(
        peer: str = "81.2.69.160",
        *,
        sync=None,
        app_store=None,
        trusted: str = "127.0.0.1,::1",
        **overrides,
    ) -> TestClient:
        redis.Redis.from_url(redis_url).flushdb()
        fields = {
            "region": "test",
            "redis_url": redis_url,
            "plans_path": plans_path,
            "usage_flush_interval": 3600.0,
            "trusted_proxies": parse_networks(trusted),
            **overrides,
        }
        app = create_app(Settings(**fields), store=app_store or store, sync=sync)
        client = TestClient(app, client=(peer, 40000))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


class LogRecords(logging.Handler):
    """Collects the formatted lines of the `app` loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def app_logs() -> Iterator[LogRecords]:
    handler = LogRecords()
    logger = logging.getLogger("app")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
