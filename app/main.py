"""The VAT-rate API: the ASGI app `app.main:app` and its factory.

Every /v1 request goes through the same steps: find the client's address
(X-Forwarded-For only from a trusted proxy), identify the user by API key (or
the anonymous tier), count the request against the plan's rate limit in
Redis, respond, then, after the response has been sent, count the request's
usage and log one line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.auth import ANONYMOUS, User
from app.errors import ApiError, clip
from app.openapi import openapi_document
from app.ratelimit import PlanError
from app.services import Services
from app.settings import Settings, SettingsError
from app.vat import ALIASES, COUNTRY_CODE, VatDataError

log = logging.getLogger("app")
JSON = "application/json"


def _json(body: bytes, status: int = 200, headers: dict | None = None) -> Response:
    return Response(body, status_code=status, headers=headers, media_type=JSON)


class RequestContext:
    """Per-request bookkeeping around the app (pure ASGI, no body buffering).

    Rejects oversized headers, adds the rate-limit headers to whatever
    response goes out, and after the response has been sent counts the
    user's usage and logs the request line.
    """

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.request_log = logs.RequestLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context: dict[str, Any] = {
            "user": ANONYMOUS,
            "ratelimit": None,
            "status": 500,
            "error": None,
        }
        scope["vat"] = context

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                context["status"] = message["status"]
                if context["ratelimit"]:
                    message["headers"] = [
                        *message.get("headers", ()),
                        *context["ratelimit"],
                    ]
            await send(message)

        try:
            header_bytes = sum(len(k) + len(v) for k, v in scope["headers"])
            if header_bytes > self.services.settings.max_header_bytes:
                await self._reject_headers(
                    header_bytes, scope, send_with_headers, context
                )
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            self._after_response(scope, context, started)

    async def _reject_headers(
        self, size: int, scope: Scope, send: Send, context: dict
    ) -> None:
        limit = self.services.settings.max_header_bytes
        error = ApiError(
            431,
            "headers_too_large",
            f"the request headers are {size} bytes; send at most {limit}",
        )
        context["error"] = error.code
        await _json(error.body(), error.status)(scope, _no_body, send)

    def _after_response(self, scope: Scope, context: dict, started: float) -> None:
        user: User = context["user"]
        status = context["status"]
        if user.id is not None and self.services.usage is not None:
            self.services.usage.record(user.id, status)
        error = context["error"]
        self.request_log.info(
            f"event=request region={self.services.settings.region} "
            f"method={scope['method']} path={clip(scope['path'], 100)!r} "
            f"status={status} ms={(time.perf_counter() - started) * 1000:.2f} "
            f"user={user.log_id}" + (f" error={error}" if error else "")
        )


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


# Endpoints


def _services(request: Request) -> Services:
    return request.app.state.services


def _query(scope: Scope) -> dict[str, str]:
    """Parse the query string; the last value of a repeated name wins."""
    raw = scope["query_string"]
    if not raw:
        return {}
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    # Nothing to unquote: split directly, which is several times faster.
    return {
        name: value
        for name, _, value in (item.partition("=") for item in text.split("&"))
        if name
    }


def _key_count(scope: Scope) -> int:
    """Count the `key` parameters in the query string."""
    text = scope["query_string"].decode("latin-1")
    pairs = parse_qsl(text, keep_blank_values=True)
    return sum(1 for name, _ in pairs if name == "key")


class V1Endpoint:
    """A rate-limited /v1 endpoint as a bare ASGI app.

    It reads headers and the query string straight from the scope and sends
    the JSON body itself, without Starlette's Request and Response objects,
    which cost more than the lookup. Errors are raised as ApiError and
    turned into JSON by the app's exception handler.
    """

    def __init__(
        self,
        handler: Callable[[Services, Scope, dict, str | None], bytes],
        services: Services | None = None,
    ):
        self.handler = handler
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = self.services or scope["app"].state.services
        authorization = None
        authorization_count = 0
        forwarded = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                authorization_count += 1
            elif name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
        peer = scope.get("client")
        client = services.addresses.resolve(peer[0] if peer else None, forwarded)
        query = _query(scope)
        context = scope["vat"]
        # Picking one of several credentials would let a caller try keys
        # in one request, so reject the request instead.
        if authorization_count > 1:
            raise ApiError(
                400,
                "multiple_authorization",
                f"the request has {authorization_count} Authorization headers; "
                "send one, as 'Bearer vat_...'",
            )
        if b"key=" in scope["query_string"] and _key_count(scope) > 1:
            raise ApiError(
                400,
                "multiple_keys",
                "the request has more than one ?key= parameter; send one",
            )
        user = services.identify(authorization, query.get("key"))
        context["user"] = user
        await services.admit(user, client, context)

        body = self.handler(services, scope, query, client)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def rates_by_ip(
    services: Services, scope: Scope, query: dict, client: str | None
) -> bytes:
    raw = query.get("ip")
    if raw is None:
        return services.caller_body(client)
    return services.lookup_body(raw)


def rates_by_country(
    services: Services, scope: Scope, query: dict, client: str | None
) -> bytes:
    raw = scope["path_params"]["country"]
    code = raw.upper()
    if not COUNTRY_CODE.fullmatch(code):
        raise ApiError(
            400,
            "invalid_country",
            f"country {clip(raw, 16)!r} is not a two-letter ISO 3166-1 code such as DE",
        )
    code = ALIASES.get(code, code)
    return orjson.dumps(services.rates_body(code))


def countries(
    services: Services, scope: Scope, query: dict, client: str | None
) -> bytes:
    return services.countries_body


async def healthz(request: Request) -> Response:
    services = _services(request)
    limiter = services.limiter
    usage = services.usage
    body = {
        "status": "ok",
        "region": services.settings.region,
        "redis_failures": limiter.failures,
        "unchecked_requests": limiter.unchecked,
        "usage_pending": usage.pending_requests() if usage else 0,
        "usage_flush_errors": usage.flush_errors if usage else 0,
    }
    return _json(orjson.dumps(body))


async def readyz(request: Request) -> Response:
    services = _services(request)
    ready = services.ready
    body = {"ready": ready, "sync": services.sync_progress()}
    return _json(orjson.dumps(body, default=str), 200 if ready else 503)


async def openapi(request: Request) -> Response:
    return _json(request.app.state.openapi)


# Errors


async def api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    context = request.scope.get("vat")
    if context is not None:
        context["error"] = error.code
    return _json(error.body(), error.status, error.headers)


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(
        error.status_code, "http_error"
    )
    message = {
        404: f"no endpoint at {clip(request.url.path, 100)}; see /openapi.json",
        405: f"method {request.method} is not allowed on {clip(request.url.path, 100)}",
    }.get(error.status_code, str(error.detail))
    converted = ApiError(error.status_code, code, message, headers=error.headers)
    return await api_error(request, converted)


async def server_error(request: Request, error: Exception) -> Response:
    log.exception(
        "event=unhandled_error path=%r error=%r",
        clip(request.url.path, 100),
        str(error),
    )
    body = ApiError(500, "internal_error", "internal error; it has been logged").body()
    return _json(body, 500)


def uvicorn_rewrites_client() -> bool:
    """Return whether uvicorn's ProxyHeadersMiddleware is on the calling stack.

    uvicorn wraps the app in that middleware unless started with
    --no-proxy-headers, and the middleware passes lifespan events through
    with an await, so the lifespan's startup runs inside its __call__.

    NOTE: this relies on uvicorn internals, checked on uvicorn 0.55. If a
    later version stops awaiting the app from that method, the check returns
    False; test_real_uvicorn_proxy_headers_warned then fails.
    """
    try:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
    except ImportError:
        return False
    middleware_code = ProxyHeadersMiddleware.__call__.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is middleware_code:
            return True
        frame = frame.f_back
    return False


def create_app(
    settings: Settings | None = None,
    *,
    store: Any | None = None,
    sync: Any | None = None,
    geolocator: Any | None = None,
) -> Starlette:
    """Build the API; `store`, `sync` and `geolocator` replace the defaults."""
    logs.configure()
    settings = settings or Settings.from_env()
    services = Services(settings, store=store, sync=sync, geolocator=geolocator)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if uvicorn_rewrites_client():
            log.warning(
                "event=proxy_headers_on region=%s error=%r",
                settings.region,
                "uvicorn replaces the client address with X-Forwarded-For before "
                "TRUSTED_PROXIES is checked; start it with --no-proxy-headers as "
                "the Procfile does",
            )
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    # The router tries routes in order: the busiest first.
    routes = [
        Route("/v1/rates", V1Endpoint(rates_by_ip, services), methods=["GET"]),
        Route(
            "/v1/rates/{country}",
            V1Endpoint(rates_by_country, services),
            methods=["GET"],
        ),
        Route("/v1/countries", V1Endpoint(countries, services), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestContext, services=services)],
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.openapi = orjson.dumps(openapi_document(services.vat))
    return app


def create_app_from_env() -> Starlette:
    """Build the API from the environment, or log one line and exit 1.

    uvicorn imports this module, so an exception would print a traceback for
    what is a configuration mistake, and the line names the setting to fix.
    """
    try:
        return create_app()
    except (SettingsError, PlanError, VatDataError) as error:
        log.critical("event=start_failed error=%r", str(error))
        logs.flush()
        raise SystemExit(1) from None


app = create_app_from_env()
