"""Rate limits per user (or per client address for anonymous calls) in Redis.

The limiter is GCRA (the generic cell rate algorithm): Redis stores one
number per bucket, the theoretical arrival time (TAT) of the next request, in
microseconds. A Lua script reads and updates it atomically, so a request costs
one EVALSHA round trip and any number of workers or processes can share the
buckets. A plan allows `burst` requests at once and `requests_per_minute`
sustained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from app.resp import RedisError, RedisUnavailable, RespClient, encode_command

log = logging.getLogger("app.ratelimit")

# KEYS[1]: the bucket. ARGV[1]: emission interval in microseconds (the time
# one request "costs"), ARGV[2]: burst. Returns {allowed (0/1), remaining,
# retry_after_us, reset_us}. The clock is Redis's own TIME, so workers with
# skewed clocks still agree.
GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()


class PlanError(ValueError):
    """The plans file is missing, unreadable or has an invalid plan."""


@dataclass(frozen=True)
class Plan:
    """A rate limit: sustained requests per minute and the burst allowed."""

    name: str
    requests_per_minute: int
    burst: int

    @property
    def interval_us(self) -> int:
        return max(1, round(60_000_000 / self.requests_per_minute))


def load_plans(path: Path | str) -> dict[str, Plan]:
    """Read the plans file; it must define `anonymous` and `free`."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PlanError(f"cannot read the plans file {path}: {error}") from None
    plans = {}
    for name, entry in document.items():
        if name.startswith("_"):
            continue
        try:
            rpm = int(entry["requests_per_minute"])
            burst = int(entry["burst"])
        except (KeyError, TypeError, ValueError):
            raise PlanError(
                f"{path}: plan {name!r} needs integer 'requests_per_minute' and "
                f"'burst'; got {entry!r}"
            ) from None
        if rpm < 1 or burst < 1:
            raise PlanError(
                f"{path}: plan {name!r} has requests_per_minute={rpm}, "
                f"burst={burst}; both must be at least 1"
            )
        plans[name] = Plan(name, rpm, burst)
    for required in ("anonymous", "free"):
        if required not in plans:
            raise PlanError(f"{path} defines no {required!r} plan; add one")
    return plans


@dataclass(slots=True)
class Decision:
    """The limiter's verdict on one request, and the headers that tell it."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: float
    reset: float
    checked: bool = True

    def headers(self) -> list[tuple[bytes, bytes]]:
        if not self.checked:
            return []
        headers = [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(math.ceil(self.reset)).encode()),
        ]
        if not self.allowed:
            headers.append((b"retry-after", str(math.ceil(self.retry_after)).encode()))
        return headers


class RateLimiter:
    """Checks requests against their plan in Redis; fails open if configured.

    While Redis is unreachable, requests pass unchecked (fail_open) or are
    rejected, Redis is skipped for `retry_interval` seconds after each
    failure, failures are counted and logged at most once per `log_interval`.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        fail_open: bool = True,
        timeout: float = 0.25,
        retry_interval: float = 1.0,
        log_interval: float = 30.0,
        region: str = "local",
    ) -> None:
        self.client = RespClient(redis_url, timeout=timeout)
        self.fail_open = fail_open
        self.retry_interval = retry_interval
        self.log_interval = log_interval
        self.region = region
        self.failures = 0
        self.unchecked = 0
        self._skip_until = 0.0
        self._last_log = -math.inf
        self._failures_logged = 0
        self._encoded: dict[str, tuple[bytes, bytes]] = {}

    async def check(self, bucket: str, plan: Plan) -> Decision:
        """Count one request against `bucket`; return the decision.

        Raises RedisUnavailable only when Redis is down and fail_open is off.
        """
        now = time.monotonic()
        if now < self._skip_until:
            return self._unchecked(plan, None)
        command = self._command(bucket, plan)
        try:
            reply = await self.client.execute_encoded(command)
            if type(reply) is not list or len(reply) != 4:
                reply = await self._retry_evalsha(command, reply)
        except (RedisUnavailable, RedisError) as error:
            self._skip_until = time.monotonic() + self.retry_interval
            return self._unchecked(plan, error)
        allowed, remaining, retry_after_us, reset_us = reply
        return Decision(
            allowed=bool(allowed),
            limit=plan.burst,
            remaining=int(remaining),
            retry_after=retry_after_us / 1e6,
            reset=reset_us / 1e6,
        )

    def _command(self, bucket: str, plan: Plan) -> bytes:
        # Only the bucket changes between requests of a plan: the rest of the
        # EVALSHA command is encoded once per plan.
        parts = self._encoded.get(plan.name)
        if parts is None:
            head = encode_command("EVALSHA", GCRA_SHA, 1, "")
            head = head[: head.rindex(b"$")].replace(b"*4\r\n", b"*6\r\n", 1)
            tail = encode_command(plan.interval_us, plan.burst).split(b"\r\n", 1)[1]
            parts = self._encoded[plan.name] = (head, tail)
        head, tail = parts
        key = bucket.encode()
        return b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail)

    async def _retry_evalsha(self, command: bytes, reply: object) -> list:
        """Load the script after NOSCRIPT and send `command` again.

        Raises RedisError for any other error or an unexpected reply.
        """
        if isinstance(reply, RedisError) and str(reply).startswith("NOSCRIPT"):
            loaded = await self.client.execute("SCRIPT", "LOAD", GCRA_SCRIPT)
            if isinstance(loaded, RedisError):
                raise loaded
            reply = await self.client.execute_encoded(command)
        if isinstance(reply, RedisError):
            raise reply
        if not isinstance(reply, list) or len(reply) != 4:
            raise RedisError(f"unexpected reply to the rate limit script: {reply!r}")
        return reply

    def _unchecked(self, plan: Plan, error: Exception | None) -> Decision:
        if error is not None:
            self.failures += 1
            self._log_failure(error)
        if not self.fail_open:
            raise RedisUnavailable(str(error) if error else "Redis is unavailable")
        self.unchecked += 1
        return Decision(True, plan.burst, plan.burst, 0.0, 0.0, checked=False)

    def _log_failure(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_log < self.log_interval:
            return
        since_last = self.failures - self._failures_logged
        self._last_log = now
        self._failures_logged = self.failures
        log.error(
            "event=ratelimit_redis_error region=%s error=%r failures=%d "
            "failures_since_last_log=%d fail_open=%s",
            self.region,
            str(error),
            self.failures,
            since_last,
            self.fail_open,
        )

    async def ping(self) -> bool:
        try:
            return await self.client.execute("PING") == b"PONG"
        except (TimeoutError, RedisUnavailable):
            return False

    async def close(self) -> None:
        await self.client.close()
