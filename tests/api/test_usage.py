"""Usage: counted after each response, flushed in batches to per-day docs."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.auth import new_user_documents
from app.sync import Conflict, open_store
from app.usage import UsageRecorder

from .servers import free_port

pytestmark = pytest.mark.redis


def _usage_doc(store, user_id: str, region: str = "test") -> dict | None:
    day = time.strftime("%Y-%m-%d", time.gmtime())
    return store.get(f"usage:{user_id}:{region}:{day}")


def test_usage_pending_until_flush(make_client, store, add_user):
    key, user_id = add_user()
    client = make_client()
    for _ in range(3):
        assert client.get("/v1/rates/DE", params={"key": key}).status_code == 200
    client.get("/v1/rates/XX", params={"key": key})
    assert _usage_doc(store, user_id) is None
    assert client.get("/healthz").json()["usage_pending"] == 4


def test_usage_flushed_by_interval(make_client, store, add_user):
    key, user_id = add_user()
    client = make_client(usage_flush_interval=0.05)
    for _ in range(3):
        client.get("/v1/rates/DE", params={"key": key})
    client.get("/v1/rates/XX", params={"key": key})
    deadline = time.monotonic() + 5
    while _usage_doc(store, user_id) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    doc = _usage_doc(store, user_id)
    assert doc["requests"] == 4
    assert doc["by_status"] == {"2xx": 3, "4xx": 1}
    assert doc["user"] == f"user:{user_id}"
    assert doc["region"] == "test"


def test_usage_flushed_on_stop(make_client, store, add_user):
    key, user_id = add_user()
    client = make_client()
    client.get("/v1/rates/DE", params={"key": key})
    client.__exit__(None, None, None)
    assert _usage_doc(store, user_id)["requests"] == 1


def test_anonymous_requests_not_recorded(make_client, store):
    client = make_client()
    client.get("/v1/countries")
    assert client.get("/healthz").json()["usage_pending"] == 0


def test_usage_adds_to_existing_doc():
    store = open_store("memory")
    recorder = UsageRecorder(store, "eu")
    recorder.record("u1", 200)
    asyncio.run(recorder.flush())
    recorder.record("u1", 200)
    recorder.record("u1", 429)
    asyncio.run(recorder.flush())
    doc = store.get(f"usage:u1:eu:{time.strftime('%Y-%m-%d', time.gmtime())}")
    assert doc["requests"] == 3
    assert doc["by_status"] == {"2xx": 2, "4xx": 1}


class FlakyStore:
    """A store whose put fails a set number of times, then works."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.inner = open_store("memory")
        self.failures = failures
        self.error = error

    def get(self, doc_id):
        return self.inner.get(doc_id)

    def put(self, doc):
        if self.failures:
            self.failures -= 1
            raise self.error
        return self.inner.put(doc)


def test_usage_retries_conflict():
    store = FlakyStore(2, Conflict("stale _rev"))
    recorder = UsageRecorder(store, "eu")
    recorder.record("u1", 200)
    assert asyncio.run(recorder.flush()) == 1
    assert recorder.flush_errors == 0


def test_usage_kept_when_store_fails():
    store = FlakyStore(1, OSError("disk full"))
    recorder = UsageRecorder(store, "eu")
    recorder.record("u1", 200)
    assert asyncio.run(recorder.flush()) == 0
    assert recorder.flush_errors == 1
    assert recorder.pending_requests() == 1
    assert asyncio.run(recorder.flush()) == 1
    assert recorder.pending_requests() == 0


def test_store_failure_does_not_affect_responses(make_client):
    store = FlakyStore(1000, OSError("disk full"))
    key, docs = new_user_documents("x@example.com", "bulk")
    for doc in docs:
        store.inner.put(doc)
    client = make_client(app_store=store, usage_flush_interval=0.01)
    for _ in range(5):
        assert client.get("/v1/rates/DE", params={"key": key}).status_code == 200
        time.sleep(0.02)
    health = client.get("/healthz").json()
    assert health["usage_flush_errors"] >= 1
    assert health["usage_pending"] == 5


def test_usage_recorded_after_response_sent(make_client, add_user):
    key, _ = add_user()
    # Redis on a closed port: the direct ASGI call below runs on its own event
    # loop, so it must not share the test client's Redis connection.
    client = make_client(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_retry_interval=60.0
    )
    app = client.app
    usage = app.state.services.usage
    events: list[str] = []
    record = usage.record
    usage.record = lambda user_id, status: (
        events.append("record"),
        record(user_id, status),
    )

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        events.append(message["type"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/rates/DE",
        "raw_path": b"/v1/rates/DE",
        "root_path": "",
        "query_string": f"key={key}".encode(),
        "headers": [(b"host", b"testserver")],
        "client": ("81.2.69.160", 40000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert events == ["http.response.start", "http.response.body", "record"]
