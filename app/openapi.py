"""The OpenAPI 3.0 document that /openapi.json serves, written by hand."""

from __future__ import annotations

from app.vat import VatTable

RATE = {"type": "number", "minimum": 0, "maximum": 100}
COUNTRY = {
    "type": "object",
    "required": ["code", "name"],
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}$"},
        "name": {"type": "string"},
    },
}


def _rates_schema(with_ip: bool) -> dict:
    properties = {
        "country": {"$ref": "#/components/schemas/Country"},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "eu_member": {"type": "boolean"},
        "standard_rate": RATE,
        "reduced_rates": {"type": "array", "items": RATE},
        "super_reduced_rate": {**RATE, "nullable": True},
        "effective_date": {"type": "string", "format": "date"},
        "source_date": {"type": "string", "format": "date"},
    }
    required = list(properties)
    if with_ip:
        properties = {"ip": {"type": "string"}, **properties}
        required = ["ip", *required]
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {
            "type": "string",
            "description": "A stable code such as invalid_address or rate_limited.",
        },
        "message": {"type": "string", "description": "What failed and what to do."},
        "ip": {"type": "string"},
        "country": {"$ref": "#/components/schemas/Country"},
        "retry_after_seconds": {"type": "number"},
    },
}

RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": {
        "description": "Requests the plan allows at once (the GCRA burst).",
        "schema": {"type": "integer"},
    },
    "RateLimit-Remaining": {
        "description": "Requests left before the limit applies.",
        "schema": {"type": "integer"},
    },
    "RateLimit-Reset": {
        "description": "Seconds until the full burst is available again.",
        "schema": {"type": "integer"},
    },
}


def _error(description: str) -> dict:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
        },
    }


def _v1_errors() -> dict:
    return {
        "400": _error("Invalid input: the message names the value and the problem."),
        "401": _error("Malformed or unknown API key."),
        "404": _error("No country, unknown country code, or no VAT data."),
        "429": {
            **_error("Rate limit exceeded; Retry-After says when to retry."),
            "headers": {
                "Retry-After": {"schema": {"type": "integer"}},
                **RATE_LIMIT_HEADERS,
            },
        },
        "431": _error("The request headers are too large."),
        "503": _error("Rate limiter unavailable (only with fail-open off)."),
    }


def _ok(schema_name: str, description: str, rate_limited: bool = True) -> dict:
    response = {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"$ref": f"#/components/schemas/{schema_name}"}
            }
        },
    }
    if rate_limited:
        response["headers"] = RATE_LIMIT_HEADERS
    return response


def openapi_document(vat: VatTable) -> dict:
    """Describe every endpoint, parameter, response and error of the API."""
    security = [{}, {"bearer": []}, {"queryKey": []}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "vatfleet VAT-rate API",
            "version": "1.0.0",
            "description": (
                "VAT rates by IP address or country. Rates data: "
                f"{vat.source} (source date {vat.source_date})."
            ),
        },
        "paths": {
            "/v1/rates": {
                "get": {
                    "summary": "Rates for the country of an IP address",
                    "operationId": "ratesByIp",
                    "security": security,
                    "parameters": [
                        {
                            "name": "ip",
                            "in": "query",
                            "required": False,
                            "description": (
                                "Public IPv4 or IPv6 address; without it, the "
                                "caller's own address."
                            ),
                            "schema": {"type": "string", "maxLength": 45},
                            "example": "77.118.0.1",
                        }
                    ],
                    "responses": {
                        "200": _ok("IpRates", "The address's country and rates."),
                        **_v1_errors(),
                    },
                }
            },
            "/v1/rates/{country}": {
                "get": {
                    "summary": "Rates of a country by ISO 3166-1 alpha-2 code",
                    "operationId": "ratesByCountry",
                    "security": security,
                    "parameters": [
                        {
                            "name": "country",
                            "in": "path",
                            "required": True,
                            "description": "Two-letter code such as DE (EL, UK too).",
                            "schema": {"type": "string", "pattern": "^[A-Za-z]{2}$"},
                            "example": "DE",
                        }
                    ],
                    "responses": {
                        "200": _ok("Rates", "The country's rates."),
                        **_v1_errors(),
                    },
                }
            },
            "/v1/countries": {
                "get": {
                    "summary": "Every country with VAT data",
                    "operationId": "countries",
                    "security": security,
                    "responses": {
                        "200": _ok("Countries", "All countries and their rates."),
                        **_v1_errors(),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness of the process",
                    "operationId": "healthz",
                    "responses": {
                        "200": _ok("Health", "The process is alive.", False),
                        "431": _error("The request headers are too large."),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: the user database has been pulled",
                    "operationId": "readyz",
                    "responses": {
                        "200": _ok("Ready", "Ready to serve.", False),
                        "503": _ok("Ready", "Still pulling the users.", False),
                        "431": _error("The request headers are too large."),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "queryKey": {"type": "apiKey", "in": "query", "name": "key"},
            },
            "schemas": {
                "Country": COUNTRY,
                "Rates": _rates_schema(with_ip=False),
                "IpRates": _rates_schema(with_ip=True),
                "Countries": {
                    "type": "object",
                    "required": ["source", "source_date", "countries"],
                    "properties": {
                        "source": {"type": "string"},
                        "source_date": {"type": "string", "format": "date"},
                        "countries": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Rates"},
                        },
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "region"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok"]},
                        "region": {"type": "string"},
                        "redis_failures": {"type": "integer"},
                        "unchecked_requests": {"type": "integer"},
                        "usage_pending": {"type": "integer"},
                        "usage_flush_errors": {"type": "integer"},
                    },
                },
                "Ready": {
                    "type": "object",
                    "required": ["ready", "sync"],
                    "properties": {
                        "ready": {"type": "boolean"},
                        "sync": {"type": "object"},
                    },
                },
                "Error": ERROR,
            },
        },
    }
