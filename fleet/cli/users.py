"""Task that manages API users on the primary user database: create-user."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from invoke import Exit, task

PLANS_FILE = Path(__file__).resolve().parents[2] / "app" / "plans.json"
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def redact_url(url: str) -> str:
    """Replace the password in a URL with ***, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    netloc = f"{parts.username}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def plan_names(path: Path = PLANS_FILE) -> list[str]:
    document = json.loads(path.read_text(encoding="utf-8"))
    return sorted(name for name in document if not name.startswith("_"))


def create_user_documents(
    couchdb_url: str, email: str, plan: str, *, timeout: float = 10.0
) -> tuple[str, str]:
    """Write a new user and its API key hash to CouchDB; return (user id, key).

    Raises RuntimeError with the database's response if a write fails.
    """
    from app.auth import new_user_documents

    key, docs = new_user_documents(email, plan)
    base = couchdb_url.rstrip("/")
    with httpx.Client(timeout=timeout) as client:
        for doc in docs:
            url = f"{base}/{quote(doc['_id'], safe='')}"
            try:
                response = client.put(url, json=doc)
            except httpx.HTTPError as error:
                raise RuntimeError(
                    f"cannot reach the user database at {redact_url(base)}: {error}"
                ) from None
            if response.status_code not in (201, 202):
                raise RuntimeError(
                    f"the user database at {redact_url(base)} rejected "
                    f"{doc['_id'].split(':')[0]} document: HTTP "
                    f"{response.status_code} {response.text[:200]}"
                )
    return docs[0]["_id"].removeprefix("user:"), key


@task(
    help={
        "email": "the user's e-mail address",
        "plan": "rate-limit plan from app/plans.json (default: free)",
        "couchdb": "primary user database URL with credentials and database "
        "name (default: $COUCHDB_URL)",
    }
)
def create_user(c, email, plan="free", couchdb=None):
    """Create an API user on the primary database and print its key once."""
    couchdb_url = couchdb or os.environ.get("COUCHDB_URL")
    if not couchdb_url:
        raise Exit(
            "no user database given: pass --couchdb "
            "http://USER:PASSWORD@HOST:5984/users or set COUCHDB_URL",
            code=2,
        )
    if not EMAIL.fullmatch(email):
        raise Exit(
            f"invalid --email {email!r}: expected an address such as ops@example.com",
            code=2,
        )
    plans = plan_names()
    if plan not in plans or plan == "anonymous":
        choices = ", ".join(name for name in plans if name != "anonymous")
        raise Exit(f"unknown --plan {plan!r}: choose one of {choices}", code=2)

    try:
        user_id, key = create_user_documents(couchdb_url, email, plan)
    except RuntimeError as error:
        raise Exit(str(error), code=1) from None
    print(f"user:    {user_id} ({email}, plan {plan})")
    print(f"API key: {key}")
    print("Store the key now: the database keeps only its SHA-256 hash.")
