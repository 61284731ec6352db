"""Rates by address and by country, against addresses with known countries.

The addresses come from geoip2fast's bundled database (GeoLite2 Country of
2024-06-18): one address inside a large network of each country. The rates
are the published standard rates (European Commission table at 1 January
2025, with Estonia's and Romania's 2025 increases), typed in here separately
from app/data/vat_rates.json so that a wrong edit of either shows.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.redis

# (address, country, standard rate %, EU member)
ADDRESSES = [
    ("77.118.0.1", "AT", 20.0, True),
    ("81.244.0.1", "BE", 21.0, True),
    ("95.43.0.1", "BG", 20.0, True),
    ("93.140.0.1", "HR", 25.0, True),
    ("31.153.128.1", "CY", 19.0, True),
    ("85.162.0.1", "CZ", 21.0, True),
    ("2.108.0.1", "DK", 25.0, True),
    ("90.191.0.1", "EE", 24.0, True),
    ("80.222.0.1", "FI", 25.5, True),
    ("86.224.0.1", "FR", 20.0, True),
    ("53.192.0.1", "DE", 19.0, True),
    ("2.86.0.1", "GR", 24.0, True),
    ("89.134.0.1", "HU", 27.0, True),
    ("34.248.0.1", "IE", 23.0, True),
    ("79.16.0.1", "IT", 22.0, True),
    ("46.109.128.1", "LV", 21.0, True),
    ("78.62.0.1", "LT", 21.0, True),
    ("158.167.0.1", "LU", 17.0, True),
    ("46.11.128.1", "MT", 18.0, True),
    ("145.112.0.1", "NL", 21.0, True),
    ("83.8.0.1", "PL", 23.0, True),
    ("85.244.0.1", "PT", 23.0, True),
    ("5.14.0.1", "RO", 21.0, True),
    ("78.99.0.1", "SK", 23.0, True),
    ("188.198.0.1", "SI", 22.0, True),
    ("88.16.0.1", "ES", 21.0, True),
    ("81.232.0.1", "SE", 25.0, True),
    ("25.192.0.1", "GB", 20.0, False),
    ("81.2.69.160", "GB", 20.0, False),
    ("88.92.0.1", "NO", 25.0, False),
    ("57.12.0.1", "CH", 8.1, False),
    ("130.208.128.1", "IS", 24.0, False),
    ("82.117.16.1", "LI", 8.1, False),
    # IPv6, and an IPv4-mapped IPv6 address that must resolve as IPv4.
    ("2a00:1450:4001:80b::200e", "DE", 19.0, True),
    ("::ffff:77.118.0.1", "AT", 20.0, True),
]

EU_MEMBERS = {
    "AT",
    "BE",
    "BG",
    "HR",
    "CY",
    "CZ",
    "DK",
    "EE",
    "FI",
    "FR",
    "DE",
    "GR",
    "HU",
    "IE",
    "IT",
    "LV",
    "LT",
    "LU",
    "MT",
    "NL",
    "PL",
    "PT",
    "RO",
    "SK",
    "SI",
    "ES",
    "SE",
}

NOT_PUBLIC = [
    ("10.0.0.1", "a private"),
    ("172.16.5.4", "a private"),
    ("192.168.1.1", "a private"),
    ("127.0.0.1", "a loopback"),
    ("0.0.0.0", "an unspecified"),
    ("169.254.1.1", "a link-local"),
    ("192.0.2.1", "a documentation"),
    ("198.51.100.7", "a documentation"),
    ("240.0.0.1", "a reserved"),
    ("224.0.0.1", "a multicast"),
    ("100.64.0.1", "a shared (carrier-grade NAT)"),
    ("::1", "a loopback"),
    ("::", "an unspecified"),
    ("fe80::1", "a link-local"),
    ("fc00::1", "a private"),
    ("2001:db8::1", "a documentation"),
    ("ff02::1", "a multicast"),
    ("::ffff:10.0.0.1", "a private"),
    ("198.18.0.1", "a special-purpose"),
]

INVALID = [
    "abc",
    "1.2.3",
    "1.2.3.4.5",
    "256.1.1.1",
    " 8.8.8.8",
    "8.8.8.8/32",
    "2001:db8::g",
    "fe80::1%eth0",
    "1" * 46,
    "",
]


def test_countries_table_covers_eu():
    members = {row[1] for row in ADDRESSES if row[3]}
    assert members == EU_MEMBERS


@pytest.mark.parametrize(("address", "country", "rate", "eu"), ADDRESSES)
def test_rates_by_address(make_client, add_user, address, country, rate, eu):
    key, _ = add_user()
    client = make_client()
    response = client.get("/v1/rates", params={"ip": address, "key": key})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["country"]["code"] == country
    assert body["standard_rate"] == rate
    assert body["eu_member"] is eu
    assert body["ip"] == address.removeprefix("::ffff:")
    assert body["source_date"] == "2025-08-01"


def test_rates_fields_for_germany(make_client, add_user):
    key, _ = add_user()
    body = make_client().get("/v1/rates/DE", params={"key": key}).json()
    assert body["country"] == {"code": "DE", "name": "Germany"}
    assert body["currency"] == "EUR"
    assert body["standard_rate"] == 19.0
    assert body["reduced_rates"] == [7.0]
    assert body["super_reduced_rate"] is None
    assert body["effective_date"] == "2025-01-01"


def test_rates_for_united_states_say_no_vat_data(make_client, add_user):
    key, _ = add_user()
    response = make_client().get("/v1/rates", params={"ip": "29.0.0.1", "key": key})
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "no_vat_data"
    assert body["country"] == {"code": "US", "name": "United States"}
    assert "no VAT data for US" in body["message"]


@pytest.mark.parametrize(("address", "kind"), NOT_PUBLIC)
def test_rates_reject_non_public_address(make_client, add_user, address, kind):
    """The message names the range with its article: 'is an unspecified address'."""
    key, _ = add_user()
    response = make_client().get("/v1/rates", params={"ip": address, "key": key})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "address_not_public"
    assert f" is {kind} address," in body["message"]


@pytest.mark.parametrize("address", INVALID)
def test_rates_reject_invalid_address(make_client, add_user, address):
    key, _ = add_user()
    response = make_client().get("/v1/rates", params={"ip": address, "key": key})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_address"


def test_rates_oversized_address_names_length(make_client, add_user):
    key, _ = add_user()
    response = make_client().get("/v1/rates", params={"ip": "9" * 5000, "key": key})
    assert response.status_code == 400
    message = response.json()["message"]
    assert "5000 characters" in message
    assert len(message) < 200


def test_rates_default_to_caller_address(make_client, add_user):
    key, _ = add_user()
    response = make_client(peer="86.224.0.1").get("/v1/rates", params={"key": key})
    assert response.status_code == 200
    assert response.json()["country"]["code"] == "FR"


@pytest.mark.parametrize(
    ("path", "code"),
    [("/v1/rates/de", "DE"), ("/v1/rates/UK", "GB"), ("/v1/rates/EL", "GR")],
)
def test_rates_by_country_code_and_alias(make_client, add_user, path, code):
    key, _ = add_user()
    response = make_client().get(path, params={"key": key})
    assert response.status_code == 200
    assert response.json()["country"]["code"] == code


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/v1/rates/XX", 404, "unknown_country"),
        ("/v1/rates/BR", 404, "no_vat_data"),
        ("/v1/rates/D1", 400, "invalid_country"),
        ("/v1/rates/DEU", 400, "invalid_country"),
        ("/v1/rates/%C3%A9%C3%A9", 400, "invalid_country"),
    ],
)
def test_rates_by_country_errors(make_client, add_user, path, status, error):
    key, _ = add_user()
    response = make_client().get(path, params={"key": key})
    assert response.status_code == status
    assert response.json()["error"] == error


def test_countries_lists_eu_and_others(make_client, add_user):
    key, _ = add_user()
    body = make_client().get("/v1/countries", params={"key": key}).json()
    codes = {entry["country"]["code"] for entry in body["countries"]}
    eu = {e["country"]["code"] for e in body["countries"] if e["eu_member"]}
    assert eu == EU_MEMBERS
    assert {"GB", "NO", "CH", "IS"} <= codes
    assert "European Commission" in body["source"]


def test_unknown_path_is_json_404(make_client):
    response = make_client().get("/v2/rates")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_post_is_json_405(make_client):
    response = make_client().post("/v1/countries")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_huge_headers_get_431(make_client):
    response = make_client().get("/v1/countries", headers={"X-Pad": "a" * 9000})
    assert response.status_code == 431
    assert response.json()["error"] == "headers_too_large"
