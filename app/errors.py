"""Errors the API returns to clients as JSON."""

from __future__ import annotations

import orjson


class ApiError(Exception):
    """A client-facing error: HTTP status, a stable code and a readable message.

    The body is `{"error": code, "message": message, **extra}`.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> bytes:
        return orjson.dumps({"error": self.code, "message": self.message, **self.extra})


def clip(value: str, limit: int = 64) -> str:
    """Shorten a client value for an error message, so echoes stay small."""
    if len(value) <= limit:
        return value
    return value[:limit] + f"... ({len(value)} characters)"
