"""The create-user task against a CouchDB peer, and the API pulling that user."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest
from invoke import Context, Exit

from fleet.cli.users import create_user, create_user_documents, redact_url

from .servers import pouchdb_server, redis_server, uvicorn_server


def test_redact_url_hides_password():
    url = "http://admin:s3cret@127.0.0.1:5984/users"
    assert redact_url(url) == "http://admin:***@127.0.0.1:5984/users"
    assert redact_url("http://127.0.0.1:5984/users") == "http://127.0.0.1:5984/users"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"email": "a@example.com"}, "no user database given"),
        ({"email": "nobody", "couchdb": "http://127.0.0.1:1/u"}, "invalid --email"),
        (
            {"email": "a@example.com", "plan": "gold", "couchdb": "http://x/u"},
            "unknown --plan 'gold'",
        ),
        (
            {"email": "a@example.com", "plan": "anonymous", "couchdb": "http://x/u"},
            "unknown --plan 'anonymous'",
        ),
    ],
)
def test_create_user_rejects_bad_options(monkeypatch, kwargs, message):
    monkeypatch.delenv("COUCHDB_URL", raising=False)
    with pytest.raises(Exit, match=message):
        create_user(Context(), **kwargs)


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.redis
def test_created_user_reaches_api(tmp_path, capsys):
    with pouchdb_server(tmp_path) as couch, redis_server() as redis_url:
        database = f"{couch}/users"
        assert httpx.put(database, timeout=10).status_code == 201

        create_user(Context(), email="new@example.com", plan="pro", couchdb=database)
        printed = capsys.readouterr().out
        key = printed.split("API key: ")[1].split()[0]
        digest = hashlib.sha256(key.encode()).hexdigest()
        key_doc = httpx.get(f"{database}/apikey:{digest}", timeout=10).json()
        assert key_doc["type"] == "apikey"
        all_docs = httpx.get(
            f"{database}/_all_docs", params={"include_docs": "true"}, timeout=10
        ).text
        assert key not in all_docs

        env = {"REDIS_URL": redis_url, "COUCHDB_URL": database, "REGION": "eu"}
        with uvicorn_server(
            "app.main:app", env, tmp_path / "server.log", ready_path="/readyz"
        ) as server:
            response = httpx.get(
                server.url + "/v1/rates/IE",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            assert response.status_code == 200
            assert response.json()["standard_rate"] == 23.0
            assert response.headers["ratelimit-limit"] == "300"
        # Read after the stop: the app writes its log lines in batches and
        # flushes the rest at exit.
        log = server.log()
    assert key not in log
    assert "event=start region=eu" in log


@pytest.mark.slow
@pytest.mark.peers
def test_create_user_reports_missing_database(tmp_path):
    # CouchDB database names cannot start with "_", so every write fails.
    with (
        pouchdb_server(tmp_path) as couch,
        pytest.raises(RuntimeError, match="rejected user document"),
    ):
        create_user_documents(f"{couch}/_bad_name", "a@example.com", "free")


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.redis
def test_readyz_follows_real_sync(tmp_path):
    with pouchdb_server(tmp_path) as couch, redis_server() as redis_url:
        database = f"{couch}/users"
        env = {"REDIS_URL": redis_url, "COUCHDB_URL": database}
        with uvicorn_server("app.main:app", env, tmp_path / "server.log") as server:
            # The primary database does not exist yet: no full pull.
            deadline = time.monotonic() + 30
            while True:
                waiting = httpx.get(server.url + "/readyz", timeout=10)
                assert waiting.status_code == 503
                assert waiting.json()["sync"]["ready"] is False
                if waiting.json()["sync"]["last_error"] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert "404" in waiting.json()["sync"]["last_error"]

            assert httpx.put(database, timeout=10).status_code == 201
            deadline = time.monotonic() + 30
            ready = waiting
            while ready.status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
                ready = httpx.get(server.url + "/readyz", timeout=10)
            assert ready.status_code == 200
            assert ready.json()["sync"]["ready"] is True
