"""Settings of the API, read once from the environment at start."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from app.resp import URL_FORMS, parse_redis_url, redact_url

APP_DIR = Path(__file__).resolve().parent

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """An environment variable has a value the API cannot use."""


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(
            f"invalid {name}={raw!r}: expected a number such as {default}"
        ) from None
    if value < 0:
        raise SettingsError(f"invalid {name}={raw!r}: expected a number >= 0")
    return value


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"invalid {name}={raw!r}: expected 1/0, true/false or on/off")


def parse_networks(raw: str, name: str = "TRUSTED_PROXIES") -> tuple[Network, ...]:
    """Parse a comma-separated list of addresses or CIDR networks."""
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(
                f"invalid {name} entry {item!r}: expected an IP address or a "
                "CIDR network such as 127.0.0.1 or 10.0.0.0/8"
            ) from None
    return tuple(networks)


def _redis_url(env: dict[str, str], default: str) -> str:
    url = env.get("REDIS_URL") or default
    try:
        parse_redis_url(url)
    except ValueError as error:
        raise SettingsError(
            f"invalid REDIS_URL={redact_url(url)!r}: {error}; use {URL_FORMS}"
        ) from None
    return url


@dataclass(frozen=True)
class Settings:
    """What the API reads from its environment (see the README's API section)."""

    region: str = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    couchdb_url: str | None = None
    replica: str = "memory"
    trusted_proxies: tuple[Network, ...] = field(
        default_factory=lambda: parse_networks("127.0.0.1,::1")
    )
    # Serve requests without a limit while Redis is unreachable (True), or
    # return 503 (False).
    rate_limit_fail_open: bool = True
    # Seconds a Redis command may take before the request goes on without it.
    redis_timeout: float = 0.25
    # Seconds to skip Redis after a failure, so an outage costs no latency.
    redis_retry_interval: float = 1.0
    # Seconds between two log lines about the same repeated failure.
    error_log_interval: float = 30.0
    # Seconds between two writes of the usage counters to the user database.
    usage_flush_interval: float = 10.0
    plans_path: Path = APP_DIR / "plans.json"
    vat_rates_path: Path = APP_DIR / "data" / "vat_rates.json"
    # Largest sum of header names and values the API accepts, in bytes.
    max_header_bytes: int = 8192

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build the settings from `env` (default: the process environment)."""
        env = dict(os.environ if env is None else env)
        defaults = cls()
        return cls(
            region=env.get("REGION") or defaults.region,
            redis_url=_redis_url(env, defaults.redis_url),
            couchdb_url=env.get("COUCHDB_URL") or None,
            replica=env.get("REPLICA") or defaults.replica,
            trusted_proxies=parse_networks(env.get("TRUSTED_PROXIES", "127.0.0.1,::1")),
            rate_limit_fail_open=_bool(
                env, "RATE_LIMIT_FAIL_OPEN", defaults.rate_limit_fail_open
            ),
            redis_timeout=_float(env, "REDIS_TIMEOUT", defaults.redis_timeout),
            redis_retry_interval=_float(
                env, "REDIS_RETRY_INTERVAL", defaults.redis_retry_interval
            ),
            error_log_interval=_float(
                env, "ERROR_LOG_INTERVAL", defaults.error_log_interval
            ),
            usage_flush_interval=_float(
                env, "USAGE_FLUSH_INTERVAL", defaults.usage_flush_interval
            ),
            plans_path=Path(env.get("PLANS_FILE") or defaults.plans_path),
            vat_rates_path=Path(env.get("VAT_RATES_FILE") or defaults.vat_rates_path),
        )
