"""API keys: where they come from, how they are stored, what is logged."""

from __future__ import annotations

import hashlib

import pytest

from app.auth import KEY_PATTERN, generate_key

pytestmark = pytest.mark.redis


def test_generated_key_matches_format():
    key = generate_key()
    assert KEY_PATTERN.fullmatch(key)
    assert generate_key() != key


def test_store_keeps_only_key_hash(store, add_user):
    key, user_id = add_user()
    digest = hashlib.sha256(key.encode()).hexdigest()
    key_doc = store.get(f"apikey:{digest}")
    assert key_doc["user"] == f"user:{user_id}"
    assert key not in repr(key_doc)
    assert key not in repr(store.get(f"user:{user_id}"))


def test_bearer_key_identifies_user(make_client, add_user, app_logs):
    key, user_id = add_user()
    response = make_client().get(
        "/v1/rates/DE", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    assert any(f"user={user_id}" in line for line in app_logs.lines)


def test_query_key_identifies_user(make_client, add_user, app_logs):
    key, user_id = add_user()
    response = make_client().get("/v1/rates/DE", params={"key": key})
    assert response.status_code == 200
    assert any(f"user={user_id}" in line for line in app_logs.lines)


def test_key_never_logged(make_client, add_user, app_logs):
    key, _ = add_user()
    client = make_client()
    client.get("/v1/rates/DE", params={"key": key})
    client.get("/v1/rates/DE", headers={"Authorization": f"Bearer {key}"})
    client.get("/v1/rates/DE", params={"key": key[:-1] + "!"})
    assert app_logs.lines
    assert not any(key[4:20] in line for line in app_logs.lines)


def test_no_key_is_anonymous(make_client, app_logs):
    response = make_client().get("/v1/rates/DE")
    assert response.status_code == 200
    assert response.headers["ratelimit-limit"] == "5"
    assert any("user=-" in line for line in app_logs.lines)


@pytest.mark.parametrize(
    ("headers", "params", "error"),
    [
        ({}, {"key": "vat_short"}, "malformed_key"),
        ({}, {"key": "x" * 2000}, "malformed_key"),
        ({"Authorization": "Bearer vat_" + "a" * 42 + "$"}, {}, "malformed_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, {}, "malformed_authorization"),
        ({"Authorization": "Bearer"}, {}, "malformed_authorization"),
        ({"Authorization": "Bearer " + "a" * 300}, {}, "malformed_authorization"),
        ({}, {"key": "vat_" + "A" * 43}, "unknown_key"),
    ],
)
def test_bad_keys_get_401(make_client, headers, params, error):
    response = make_client().get("/v1/rates/DE", headers=headers, params=params)
    assert response.status_code == 401
    assert response.json()["error"] == error
    assert "www-authenticate" in response.headers


def test_conflicting_keys_get_400(make_client, add_user):
    key, _ = add_user()
    other, _ = add_user()
    response = make_client().get(
        "/v1/rates/DE",
        headers={"Authorization": f"Bearer {key}"},
        params={"key": other},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "conflicting_keys"


def test_two_authorization_headers_get_400(make_client, add_user):
    """A bad key followed by a good one must not authenticate the request."""
    key, _ = add_user()
    bad = "vat_" + "A" * 43
    headers = [("Authorization", f"Bearer {bad}"), ("Authorization", f"Bearer {key}")]
    response = make_client().get("/v1/rates/DE", headers=headers)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "multiple_authorization"
    assert "2 Authorization headers" in body["message"]


def test_repeated_authorization_of_one_key_gets_400(make_client, add_user):
    key, _ = add_user()
    headers = [("Authorization", f"Bearer {key}")] * 2
    response = make_client().get("/v1/rates/DE", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "multiple_authorization"


def test_two_query_keys_get_400(make_client, add_user):
    key, _ = add_user()
    bad = "vat_" + "A" * 43
    response = make_client().get("/v1/rates/DE", params=[("key", bad), ("key", key)])
    assert response.status_code == 400
    assert response.json()["error"] == "multiple_keys"


def test_param_ending_in_key_is_ignored(make_client, add_user):
    key, _ = add_user()
    response = make_client().get(
        "/v1/rates/DE", params=[("monkey", "1"), ("key", key)]
    )
    assert response.status_code == 200


def test_same_key_in_header_and_query_is_accepted(make_client, add_user):
    key, _ = add_user()
    response = make_client().get(
        "/v1/rates/DE",
        headers={"Authorization": f"Bearer {key}"},
        params={"key": key},
    )
    assert response.status_code == 200


def test_key_of_deleted_user_gets_401(make_client, store, add_user):
    key, user_id = add_user()
    user_doc = store.get(f"user:{user_id}")
    store.put({"_id": user_doc["_id"], "_rev": user_doc["_rev"], "_deleted": True})
    response = make_client().get("/v1/rates/DE", params={"key": key})
    assert response.status_code == 401
    assert response.json()["error"] == "unknown_user"
