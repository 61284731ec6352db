"""Liveness, readiness (503 until the first full pull) and the OpenAPI document."""

from __future__ import annotations

import pytest

from app.settings import Settings, SettingsError

pytestmark = pytest.mark.redis


class PullingSync:
    """Follows the SyncService contract; the test decides when it is ready."""

    def __init__(self) -> None:
        self.ready = False
        self.started = False
        self.stopped = False
        self.docs_read = 0

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def progress(self) -> dict:
        return {
            "ready": self.ready,
            "docs_read": self.docs_read,
            "docs_written": self.docs_read,
            "last_seq": self.docs_read,
            "lag_seconds": None,
            "last_error": None,
            "pending_push": 0,
        }


def test_readyz_503_until_first_pull(make_client):
    sync = PullingSync()
    client = make_client(sync=sync)
    assert sync.started
    sync.docs_read = 120
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "sync": sync.progress()}

    sync.ready = True
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["sync"]["docs_read"] == 120
    assert client.get("/healthz").status_code == 200


def test_readyz_ready_without_couchdb(make_client, app_logs):
    response = make_client().get("/readyz")
    assert response.status_code == 200
    assert response.json()["sync"]["enabled"] is False
    assert any("event=sync_disabled" in line for line in app_logs.lines)


def test_sync_stopped_with_app(make_client):
    sync = PullingSync()
    client = make_client(sync=sync)
    client.__exit__(None, None, None)
    assert sync.stopped


def test_healthz_while_not_ready(make_client):
    client = make_client(sync=PullingSync())
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_openapi_lists_endpoints(make_client):
    document = make_client().get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/v1/rates",
        "/v1/rates/{country}",
        "/v1/countries",
        "/healthz",
        "/readyz",
    }


def test_start_and_stop_logged(make_client, app_logs):
    client = make_client()
    client.__exit__(None, None, None)
    assert any(line.startswith("event=start ") for line in app_logs.lines)
    assert any(line.startswith("event=stop ") for line in app_logs.lines)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRUSTED_PROXIES", "10.0.0.300"),
        ("RATE_LIMIT_FAIL_OPEN", "maybe"),
        ("REDIS_TIMEOUT", "-1"),
        ("USAGE_FLUSH_INTERVAL", "soon"),
        ("REDIS_URL", "rediss://127.0.0.1:6379/0"),
        ("REDIS_URL", "localhost:6379"),
    ],
)
def test_bad_environment_named_in_error(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_memory_replica_id_follows_region():
    """A restarted memory replica keeps its replication id; regions differ."""
    from types import SimpleNamespace

    from app.services import Services

    def open_for(region: str):
        settings = Settings.from_env({"REGION": region})
        return Services._open_store(SimpleNamespace(settings=settings))

    first, restarted = open_for("eu-west-1"), open_for("eu-west-1")
    other = open_for("us-east-1")

    assert first.replica_id == restarted.replica_id
    assert first.replica_id != other.replica_id
    assert first.get("user:any") is None
