"""API keys: their format, their hash, and the user a key belongs to.

A key is `vat_` followed by 43 URL-safe base64 characters (32 random bytes).
The user database stores only the key's SHA-256 hex digest, as the document
`apikey:<digest>` that names its user.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from app.errors import ApiError, clip

KEY_PREFIX = "vat_"
KEY_PATTERN = re.compile(r"vat_[A-Za-z0-9_-]{43}")
MAX_AUTHORIZATION_LENGTH = 256


class DocumentStore(Protocol):
    def get(self, doc_id: str) -> dict | None: ...

    def put(self, doc: dict) -> str: ...


@dataclass(frozen=True)
class User:
    """The caller of a request: a user id and plan, or the anonymous tier."""

    id: str | None
    plan: str

    @property
    def log_id(self) -> str:
        return self.id or "-"


ANONYMOUS = User(None, "anonymous")


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def new_user_documents(
    email: str, plan: str, now: datetime.datetime | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Build a new user's documents; return the key (shown once) and the docs."""
    now = now or datetime.datetime.now(datetime.UTC)
    created = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    user_id = "u" + secrets.token_hex(8)
    key = generate_key()
    user_doc = {
        "_id": f"user:{user_id}",
        "type": "user",
        "email": email,
        "plan": plan,
        "created": created,
    }
    key_doc = {
        "_id": f"apikey:{hash_key(key)}",
        "type": "apikey",
        "user": f"user:{user_id}",
        "created": created,
    }
    return key, [user_doc, key_doc]


def key_from_request(authorization: str | None, query_key: str | None) -> str | None:
    """Pick the key from `Authorization: Bearer KEY` or `?key=KEY`.

    Raises a 401 ApiError for a malformed header or key, and a 400 one when
    both are present and differ.
    """
    header_key = None
    if authorization is not None:
        if len(authorization) > MAX_AUTHORIZATION_LENGTH:
            raise ApiError(
                401,
                "malformed_authorization",
                f"the Authorization header is {len(authorization)} characters "
                f"long; send at most {MAX_AUTHORIZATION_LENGTH}, as "
                "'Bearer vat_...'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise ApiError(
                401,
                "malformed_authorization",
                "the Authorization header must be 'Bearer <API key>'; got the "
                f"scheme {clip(scheme, 16)!r}",
                headers={"WWW-Authenticate": "Bearer"},
            )
        header_key = credentials.strip()
    if header_key and query_key is not None and query_key != header_key:
        raise ApiError(
            400,
            "conflicting_keys",
            "the request has different API keys in the Authorization header "
            "and in ?key=; send one of them",
        )
    key = header_key or query_key
    if key is None:
        return None
    if not KEY_PATTERN.fullmatch(key):
        raise ApiError(
            401,
            "malformed_key",
            f"the API key is malformed ({len(key)} characters); a key is 'vat_' "
            "and 43 characters of A-Z, a-z, 0-9, '-' or '_'",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return key


def resolve_user(store: DocumentStore, key: str) -> User:
    """Look the key's hash up in the user database, raising 401 if unknown."""
    key_doc = store.get(f"apikey:{hash_key(key)}")
    if key_doc is None or key_doc.get("type") != "apikey":
        raise ApiError(
            401,
            "unknown_key",
            "the API key is not known in this region; check it, or wait a few "
            "seconds if it was just created",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    user_ref = str(key_doc.get("user", ""))
    user_doc = store.get(user_ref) if user_ref.startswith("user:") else None
    if user_doc is None:
        raise ApiError(
            401,
            "unknown_user",
            "the API key's user does not exist in this region; it may have been "
            "deleted",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return User(user_ref.removeprefix("user:"), str(user_doc.get("plan", "free")))
