"""Rate limits: per user, per anonymous address, with Redis up and down."""

from __future__ import annotations

import json

import pytest

from .servers import free_port, redis_server

pytestmark = pytest.mark.redis


def test_user_limit_returns_429_with_headers(make_client, add_user):
    key, _ = add_user(plan="free")  # burst 3, 1 per minute
    client = make_client()
    statuses = []
    for _ in range(5):
        response = client.get("/v1/rates/DE", params={"key": key})
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429, 429]
    assert response.json()["error"] == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["ratelimit-limit"] == "3"
    assert response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["ratelimit-reset"]) > 0


def test_remaining_counts_down(make_client, add_user):
    key, _ = add_user(plan="free")
    client = make_client()
    remaining = [
        client.get("/v1/rates/DE", params={"key": key}).headers["ratelimit-remaining"]
        for _ in range(3)
    ]
    assert remaining == ["2", "1", "0"]


def test_limit_is_per_user_not_per_address(make_client, add_user):
    first, _ = add_user(plan="free")
    second, _ = add_user(plan="free")
    client = make_client()
    for _ in range(3):
        client.get("/v1/rates/DE", params={"key": first})
    assert client.get("/v1/rates/DE", params={"key": first}).status_code == 429
    assert client.get("/v1/rates/DE", params={"key": second}).status_code == 200


def test_anonymous_limit_is_per_address(make_client):
    first = make_client(peer="81.2.69.160")
    second = make_client(peer="77.118.0.1")
    statuses = [first.get("/v1/countries").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    assert second.get("/v1/countries").status_code == 200


def test_health_endpoints_are_not_limited(make_client):
    client = make_client()
    for _ in range(8):
        client.get("/v1/countries")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_redis_down_fails_open_and_counts(make_client, add_user, app_logs):
    key, _ = add_user(plan="free")
    client = make_client(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_retry_interval=0.0
    )
    statuses = [
        client.get("/v1/rates/DE", params={"key": key}).status_code for _ in range(6)
    ]
    assert statuses == [200] * 6
    health = client.get("/healthz").json()
    assert health["redis_failures"] == 6
    assert health["unchecked_requests"] == 6
    errors = [line for line in app_logs.lines if "ratelimit_redis_error" in line]
    assert len(errors) == 1
    assert "cannot connect to Redis" in errors[0]


def test_redis_down_skips_redis_for_retry_interval(make_client):
    client = make_client(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_retry_interval=60.0
    )
    for _ in range(4):
        assert client.get("/v1/countries").status_code == 200
    health = client.get("/healthz").json()
    assert health["redis_failures"] == 1
    assert health["unchecked_requests"] == 4


def test_redis_down_fails_closed_when_configured(make_client):
    client = make_client(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_fail_open=False
    )
    response = client.get("/v1/countries")
    assert response.status_code == 503
    assert response.json()["error"] == "rate_limiter_unavailable"
    assert response.headers["retry-after"] == "1"


def test_script_reloaded_after_script_flush(make_client, add_user, redis_url):
    import redis

    key, _ = add_user(plan="free")
    client = make_client()
    assert client.get("/v1/rates/DE", params={"key": key}).status_code == 200
    redis.Redis.from_url(redis_url).script_flush()
    response = client.get("/v1/rates/DE", params={"key": key})
    assert response.status_code == 200
    assert response.headers["ratelimit-remaining"] == "1"


def test_limiter_recovers_after_redis_restart(make_client, add_user):
    key, _ = add_user(plan="free")
    port = free_port()
    with redis_server(port=port) as url:
        client = make_client(redis_url=url, redis_retry_interval=0.0)
        first = client.get("/v1/rates/DE", params={"key": key})
        assert first.headers["ratelimit-remaining"] == "2"
    down = client.get("/v1/rates/DE", params={"key": key})
    assert down.status_code == 200
    assert "ratelimit-remaining" not in down.headers
    with redis_server(port=port):
        again = client.get("/v1/rates/DE", params={"key": key})
        assert again.status_code == 200
        # A new, empty Redis: the bucket starts full again.
        assert again.headers["ratelimit-remaining"] == "2"
    assert client.get("/healthz").json()["redis_failures"] >= 1


def test_unknown_plan_gets_lowest_user_plan(make_client, add_user, app_logs):
    """A user with an unknown plan gets the limits of 'free', the lowest one."""
    key, user_id = add_user(plan="platinum")
    client = make_client()
    statuses = []
    for _ in range(4):
        response = client.get("/v1/rates/DE", params={"key": key})
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    assert response.headers["ratelimit-limit"] == "3"
    message = response.json()["message"]
    assert "plan 'free'" in message
    assert "'platinum' is unknown" in message
    logged = [line for line in app_logs.lines if "event=unknown_plan" in line]
    assert logged == [
        f"event=unknown_plan region=test user={user_id} plan='platinum' fallback=free"
    ]


def test_unknown_plan_logged_once_per_user(make_client, add_user, app_logs):
    first, first_id = add_user(plan="platinum")
    second, second_id = add_user(plan="platinum")
    client = make_client()
    for key in (first, second, first, second):
        assert client.get("/v1/rates/DE", params={"key": key}).status_code == 200
    logged = [line for line in app_logs.lines if "event=unknown_plan" in line]
    assert len(logged) == 2
    assert f"user={first_id} " in logged[0]
    assert f"user={second_id} " in logged[1]


def test_unknown_plan_fallback_is_lowest_not_free(make_client, add_user, tmp_path):
    plans = tmp_path / "plans.json"
    plans.write_text(
        json.dumps(
            {
                "anonymous": {"requests_per_minute": 1, "burst": 1},
                "free": {"requests_per_minute": 60, "burst": 20},
                "starter": {"requests_per_minute": 2, "burst": 4},
                "pro": {"requests_per_minute": 600, "burst": 200},
            }
        )
    )
    key, _ = add_user(plan="Pro ")
    response = make_client(plans_path=plans).get("/v1/rates/DE", params={"key": key})
    assert response.status_code == 200
    assert response.headers["ratelimit-limit"] == "4"
