"""The API with a real primary: ready only once every user is replicated."""

from __future__ import annotations

import time

import pytest
from couch_peers import free_port, user_docs
from starlette.testclient import TestClient

from app.auth import hash_key
from app.main import create_app
from app.settings import Settings

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(120)]

API_KEY = "vat_" + "k" * 43


def test_fresh_app_ready_with_every_user(pouch_server, db_name):
    users = user_docs(5_000)
    pouch_server.bulk_docs(db_name, users)
    key_doc = {
        "_id": f"apikey:{hash_key(API_KEY)}",
        "type": "apikey",
        "user": users[-1]["_id"],
        "created": "2026-01-01T00:00:00Z",
    }
    pouch_server.bulk_docs(db_name, [key_doc])
    settings = Settings(
        couchdb_url=pouch_server.url(db_name),
        replica="memory",
        # Nothing listens there: rate limits fail open, which this test
        # does not look at.
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    app = create_app(settings)

    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while True:
            readyz = client.get("/readyz")
            if readyz.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert readyz.status_code == 200, readyz.text
        sync = readyz.json()["sync"]
        assert sync["ready"] is True
        assert sync["docs_read"] == 5_001
        assert sync["last_error"] is None

        store = app.state.services.store
        for user in users:
            assert store.get(user["_id"])["email"] == user["email"]

        rates = client.get(
            "/v1/rates/DE", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        assert rates.status_code == 200, rates.text
        unknown = "vat_" + "u" * 43
        rejected = client.get(
            "/v1/rates/DE", headers={"Authorization": f"Bearer {unknown}"}
        )
        assert rejected.status_code == 401
