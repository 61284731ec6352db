"""The API's long-lived parts, started and stopped by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

import orjson

from app import geo, logs, vat
from app.auth import ANONYMOUS, DocumentStore, User, key_from_request, resolve_user
from app.clientaddr import ClientAddressResolver
from app.errors import ApiError, clip
from app.ratelimit import Plan, RateLimiter, load_plans
from app.resp import RedisUnavailable
from app.settings import Settings
from app.usage import UsageRecorder

log = logging.getLogger("app")

# Seconds a resolved API key stays cached, and how many keys are kept.
USER_CACHE_SECONDS = 5.0
USER_CACHE_SIZE = 10_000
# Cached /v1/rates?ip= response bodies. The cache is emptied when full.
LOOKUP_CACHE_SIZE = 65_536

_shared_geolocator: geo.Geolocator | None = None


def shared_geolocator() -> geo.Geolocator:
    """Load geoip2fast's database once per process (it lives in module globals)."""
    global _shared_geolocator
    if _shared_geolocator is None:
        _shared_geolocator = geo.Geolocator()
    return _shared_geolocator


def lowest_user_plan(plans: dict[str, Plan]) -> Plan:
    """Return the non-anonymous plan with the lowest sustained rate and burst.

    It applies to a user whose document names a plan the plans file lacks,
    such as a typo or a plan not yet deployed to this region. The user stays
    served, with the user's own bucket instead of a shared per-address one,
    and gets no more than the cheapest real plan allows.
    """
    candidates = [plan for name, plan in plans.items() if name != "anonymous"]
    return min(candidates, key=lambda plan: (plan.requests_per_minute, plan.burst))


class Services:
    """Geolocation, VAT data, users, rate limits, usage and sync for one app."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: DocumentStore | None = None,
        sync: Any | None = None,
        geolocator: geo.Geolocator | None = None,
    ) -> None:
        self.settings = settings
        self.vat = vat.load(settings.vat_rates_path)
        self.plans = load_plans(settings.plans_path)
        self.addresses = ClientAddressResolver(settings.trusted_proxies)
        self.limiter = RateLimiter(
            settings.redis_url,
            fail_open=settings.rate_limit_fail_open,
            timeout=settings.redis_timeout,
            retry_interval=settings.redis_retry_interval,
            log_interval=settings.error_log_interval,
            region=settings.region,
        )
        self.geo = geolocator
        self.store = store
        self.sync = sync
        self.usage: UsageRecorder | None = None
        self._flusher: asyncio.Task | None = None
        self.fallback_plan = lowest_user_plan(self.plans)
        # Users already logged with an unknown plan, as (user id, plan).
        self._unknown_plans: set[tuple[str | None, str]] = set()
        self._users: dict[tuple[str | None, str | None], tuple[User, float]] = {}
        self._lookups: dict[str, bytes] = {}
        self.country_names: dict[str, str] = {}
        self._rates = {
            code: rates.to_dict(self.vat.source_date)
            for code, rates in self.vat.countries.items()
        }
        self.countries_body = orjson.dumps(
            {
                "source": self.vat.source,
                "source_date": self.vat.source_date,
                "countries": list(self._rates.values()),
            }
        )

    # Start and stop

    async def start(self) -> None:
        started = time.perf_counter()
        if self.geo is None:
            self.geo = shared_geolocator()
        self.country_names = self.geo.country_names()
        if self.store is None:
            self.store = self._open_store()
        if self.sync is None and self.settings.couchdb_url:
            from app.sync import SyncService

            self.sync = SyncService(self.store, self.settings.couchdb_url)
        if self.sync is not None:
            await self.sync.start()
        else:
            log.info(
                "event=sync_disabled region=%s reason=%r ready=true",
                self.settings.region,
                "COUCHDB_URL is unset: serving from the local store only",
            )
        self.usage = UsageRecorder(self.store, self.settings.region)
        self._flusher = asyncio.create_task(self._flush_usage_forever())
        # geoip2fast's tables are large lists that every full collection
        # walks (about 20 ms on an AMD EPYC core): a pause that lands in the
        # p99. Objects that exist now live as long as the process, so move
        # them out of the collector's reach.
        gc.freeze()
        log.info(
            "event=start region=%s replica=%s couchdb=%s redis=%s "
            "countries=%d geoip=%r seconds=%.3f",
            self.settings.region,
            self.settings.replica,
            "set" if self.settings.couchdb_url else "unset",
            self.limiter.client.address,
            len(self.vat.countries),
            self.geo.info,
            time.perf_counter() - started,
        )

    def _open_store(self) -> DocumentStore:
        from app.sync import open_store

        if self.settings.replica == "memory":
            # A memory replica cannot persist its replica id, so the region
            # names it: the replication id, and so the primary's checkpoint
            # document, stays the same across restarts instead of leaving a
            # new one behind each time. The empty store still pulls from
            # sequence 0, because its own checkpoint is missing.
            return open_store("memory", replica_id=f"vatapi-{self.settings.region}")
        return open_store(self.settings.replica)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self.usage is not None:
            await self.usage.flush()
        if self.sync is not None:
            try:
                await self.sync.stop()
            except Exception as error:  # noqa: BLE001 - log and finish stopping
                log.error("event=sync_stop_error error=%r", str(error))
        await self.limiter.close()
        log.info(
            "event=stop region=%s usage_flushed=%d redis_failures=%d",
            self.settings.region,
            self.usage.flushed_requests if self.usage else 0,
            self.limiter.failures,
        )
        # uvicorn's worker processes end with os._exit(), which skips the
        # logging module's flush at exit.
        logs.flush()

    async def _flush_usage_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.usage_flush_interval)
            try:
                await self.usage.flush()
            except Exception as error:  # noqa: BLE001 - keep the flusher alive
                log.error("event=usage_flusher_error error=%r", str(error))

    # Readiness

    @property
    def ready(self) -> bool:
        return self.sync is None or bool(self.sync.ready)

    def sync_progress(self) -> dict:
        if self.sync is None:
            return {"ready": True, "enabled": False}
        return dict(self.sync.progress())

    # Requests

    def plan_for(self, user: User) -> Plan:
        """Return the user's plan, or `fallback_plan` if the plans file lacks it.

        An unknown plan is logged once per user and process.
        """
        plan = self.plans.get(user.plan)
        if plan is not None:
            return plan
        seen = (user.id, user.plan)
        if seen not in self._unknown_plans:
            if len(self._unknown_plans) >= USER_CACHE_SIZE:
                self._unknown_plans.clear()
            self._unknown_plans.add(seen)
            log.warning(
                "event=unknown_plan region=%s user=%s plan=%r fallback=%s",
                self.settings.region,
                user.log_id,
                clip(user.plan, 64),
                self.fallback_plan.name,
            )
        return self.fallback_plan

    def identify(self, authorization: str | None, query_key: str | None) -> User:
        """Return the caller's user, from a short-lived cache when possible.

        The cache is keyed by the raw Authorization header and ?key= value,
        so a repeated caller skips parsing and hashing too. A key resolved
        in the last USER_CACHE_SECONDS is not looked up again, so a revoked
        key or a changed plan takes effect within that time. Rejected keys
        are not cached.
        """
        if authorization is None and query_key is None:
            return ANONYMOUS
        now = time.monotonic()
        cached = self._users.get((authorization, query_key))
        if cached is not None and cached[1] > now:
            return cached[0]
        key = key_from_request(authorization, query_key)
        if key is None:
            return ANONYMOUS
        user = resolve_user(self.store, key)
        if len(self._users) >= USER_CACHE_SIZE:
            self._users.clear()
        self._users[(authorization, query_key)] = (user, now + USER_CACHE_SECONDS)
        return user

    def lookup_body(self, raw: str) -> bytes:
        """Return the /v1/rates?ip= body for `raw`, or raise a 4xx ApiError.

        Successful responses are cached by the address as sent, since the
        geolocation database and the VAT table do not change while the
        process runs.
        """
        body = self._lookups.get(raw)
        if body is not None:
            return body
        address = geo.parse_address(raw)
        geo.check_public(address)
        body = orjson.dumps(self._locate_rates(address))
        if len(self._lookups) >= LOOKUP_CACHE_SIZE:
            self._lookups.clear()
        self._lookups[raw] = body
        return body

    def caller_body(self, client: str | None) -> bytes:
        """Return the /v1/rates body for the caller's own address."""
        if client is None:
            raise ApiError(
                400,
                "missing_ip",
                "the client's address is unknown; pass ?ip=ADDRESS",
            )
        address = geo.parse_address(client, what="your address")
        geo.check_public(address, what="your address")
        return orjson.dumps(self._locate_rates(address))

    def _locate_rates(self, address: geo.IPAddress) -> dict:
        location = self.geo.locate(address)
        if location is None:
            raise ApiError(
                404,
                "country_not_found",
                f"no country is known for {address}; pass ?ip= with another "
                "address or ask /v1/rates/{country}",
                extra={"ip": str(address)},
            )
        return self.rates_body(location.country_code, str(address))

    def rates_body(self, code: str, ip: str | None = None) -> dict:
        """Return the response body for a country, or raise a 404 ApiError."""
        body = self._rates.get(code)
        if body is not None:
            return body if ip is None else {"ip": ip, **body}
        name = self.country_names.get(code)
        if name is None:
            raise ApiError(
                404,
                "unknown_country",
                f"{code} is not an ISO 3166-1 country code; see /v1/countries "
                "for the countries with VAT data",
            )
        extra: dict[str, Any] = {"country": {"code": code, "name": name}}
        if ip is not None:
            extra["ip"] = ip
        raise ApiError(
            404,
            "no_vat_data",
            f"no VAT data for {code} ({name}); see /v1/countries for the "
            "countries with VAT data",
            extra=extra,
        )

    async def admit(self, user: User, client: str | None, context: dict) -> None:
        """Count the request against the user's (or address's) rate limit.

        Stores the rate-limit headers in `context` and raises a 429 ApiError
        when the limit is exceeded.
        """
        if user.id is not None:
            bucket = f"rl:user:{user.id}"
        else:
            bucket = f"rl:addr:{client or 'unknown'}"
        plan = self.plan_for(user)
        try:
            decision = await self.limiter.check(bucket, plan)
        except RedisUnavailable:
            raise ApiError(
                503,
                "rate_limiter_unavailable",
                "the rate limiter is unavailable; retry in a second",
                headers={"Retry-After": "1"},
            ) from None
        context["ratelimit"] = decision.headers()
        if not decision.allowed:
            plan_label = f"plan {plan.name!r}"
            if plan.name != user.plan:
                plan_label += f" (your plan {clip(user.plan, 64)!r} is unknown here)"
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit of {plan_label} exceeded ({plan.burst} at once, "
                f"{plan.requests_per_minute} per minute); retry after "
                f"{decision.retry_after:.2f} s",
                extra={"retry_after_seconds": round(decision.retry_after, 3)},
            )
