"""X-Forwarded-For counts only when the peer is a trusted proxy."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.redis

FRANCE = "86.224.0.1"
AUSTRIA = "77.118.0.1"


def _country(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["country"]["code"]


def test_untrusted_peer_header_ignored(make_client):
    client = make_client(peer=FRANCE)
    response = client.get("/v1/rates", headers={"X-Forwarded-For": AUSTRIA})
    assert _country(response) == "FR"


def test_trusted_peer_header_used(make_client):
    client = make_client(peer="127.0.0.1")
    response = client.get("/v1/rates", headers={"X-Forwarded-For": AUSTRIA})
    assert _country(response) == "AT"


def test_trusted_ipv6_peer_header_used(make_client):
    client = make_client(peer="::1")
    response = client.get("/v1/rates", headers={"X-Forwarded-For": AUSTRIA})
    assert _country(response) == "AT"


def test_client_spoofed_entry_ignored(make_client):
    # The client sent "X-Forwarded-For: FRANCE"; nginx appended the real
    # address. Only the right-most untrusted entry is the client.
    client = make_client(peer="127.0.0.1")
    response = client.get(
        "/v1/rates", headers={"X-Forwarded-For": f"{FRANCE}, {AUSTRIA}"}
    )
    assert _country(response) == "AT"


def test_trusted_hops_skipped(make_client):
    client = make_client(peer="127.0.0.1", trusted="127.0.0.1,10.1.0.0/16")
    response = client.get(
        "/v1/rates", headers={"X-Forwarded-For": f"{AUSTRIA}, 10.1.2.3"}
    )
    assert _country(response) == "AT"


def test_anonymous_bucket_follows_forwarded_client(make_client):
    client = make_client(peer="127.0.0.1")
    for _ in range(5):
        client.get("/v1/countries", headers={"X-Forwarded-For": FRANCE})
    limited = client.get("/v1/countries", headers={"X-Forwarded-For": FRANCE})
    assert limited.status_code == 429
    other = client.get("/v1/countries", headers={"X-Forwarded-For": AUSTRIA})
    assert other.status_code == 200


def test_untrusted_peer_cannot_pick_bucket(make_client):
    client = make_client(peer=FRANCE)
    statuses = [
        client.get(
            "/v1/countries", headers={"X-Forwarded-For": f"203.0.113.{i}"}
        ).status_code
        for i in range(6)
    ]
    assert statuses == [200] * 5 + [429]


@pytest.mark.parametrize(
    "header", ["not-an-address", f"{AUSTRIA},,", ", ".join([AUSTRIA] * 21)]
)
def test_bad_forwarded_header_gets_400(make_client, header):
    client = make_client(peer="127.0.0.1")
    response = client.get("/v1/rates", headers={"X-Forwarded-For": header})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_forwarded_for"
