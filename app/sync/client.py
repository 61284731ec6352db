"""An async HTTP client for one CouchDB database (httpx).

Errors map onto what a replicator does next: `AuthError` (401, 403) stops it,
`TransientError` (network errors, timeouts, 5xx, 429) makes it retry, and
`NotFound` and `CouchError` carry the rest. No URL or message from here ever
holds the credentials: they travel only as an httpx auth object.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from app.sync.store import gc_paused

# A URL's userinfo ("user:password@"), in any text.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")

# Longest request URL the fallback to `open_revs` builds, in bytes. CouchDB
# rejects longer request lines with 414, and proxies often stop near 8 KiB.
MAX_URL_BYTES = 4_000
# A request other than a longpoll may take this many times the read timeout
# in total, enough for a first-pull page over a slow link.
TOTAL_TIMEOUT_FACTOR = 10


def redact(text: str) -> str:
    """Replace the userinfo of every URL in `text` with "***"."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


class CouchError(Exception):
    """A request to the database failed; `status` is the HTTP status or None."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(redact(message))
        self.status = status


class AuthError(CouchError):
    """The server rejected the credentials (401) or the access (403)."""


class TransientError(CouchError):
    """A failure worth retrying: network, timeout, 5xx or 429."""


class BadResponse(TransientError):
    """A 2xx response whose body is not the JSON the replication protocol defines.

    Retried like a network error: a proxy's error page or a cut-off body
    usually goes away on the next attempt. `too_deep` is True when the body
    is JSON nested deeper than orjson parses (1024 levels), which no retry
    fixes.
    """

    too_deep = False


class NotFound(CouchError):
    """404: the database or document does not exist."""


class DocConflict(CouchError):
    """409: the document changed since it was read."""


def doc_path(doc_id: str) -> str:
    """Encode a document id as a URL path segment (keeps `_design/`'s slash)."""
    for prefix in ("_design/", "_local/"):
        if doc_id.startswith(prefix):
            return prefix + quote(doc_id[len(prefix) :], safe="")
    return quote(doc_id, safe="")


def _seq_param(seq: Any) -> str:
    # Sequences are opaque: integers are sent as numbers and anything else as
    # the exact string the server sent.
    if isinstance(seq, str):
        return seq
    return orjson.dumps(seq).decode()


class Database:
    """One CouchDB database reached over HTTP, credentials kept out of URLs."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        event_hooks: dict[str, list[Callable]] | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(
                f"invalid database URL {redact(url)!r}: expected "
                "http(s)://[user:password@]host[:port]/database"
            )
        if not parsed.path.strip("/"):
            raise ValueError(
                f"database URL {redact(url)!r} names no database: append "
                "/<database name>"
            )
        auth = None
        if parsed.username or parsed.password:
            auth = httpx.BasicAuth(parsed.username, parsed.password)
        self.url = str(parsed.copy_with(username=None, password=None)).rstrip("/")
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            auth=auth,
            timeout=timeout,
            transport=transport,
            event_hooks=event_hooks,
            headers={"Accept": "application/json"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- plumbing

    async def request(
        self,
        method: str,
        path: str = "",
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        timeout: float | httpx.Timeout | None = None,
        on_chunk: Callable[[bytes], None] | None = None,
        headers: dict[str, str] | None = None,
        expect: type | None = dict,
    ) -> Any:
        """Send one request and return the decoded JSON body.

        `on_chunk` sees every received chunk, which is how heartbeats (bare
        newlines) of a longpoll `_changes` request are noticed. Raises
        BadResponse unless the body is JSON of type `expect` (an empty body
        is returned as None when `expect` is None).
        """
        url = f"{self.url}/{path}" if path else self.url
        # httpx's read timeout applies to each read, so a server that sends a
        # byte now and then holds a request open without end. A longpoll
        # (`timeout` given) is bounded by its heartbeats instead.
        deadline = None if timeout is not None else self.timeout * TOTAL_TIMEOUT_FACTOR
        content = orjson.dumps(json) if json is not None else None
        headers = dict(headers or {})
        if content:
            headers["Content-Type"] = "application/json"
        try:
            async with asyncio.timeout(deadline), self._client.stream(
                method,
                url,
                params=params,
                content=content,
                headers=headers,
                timeout=timeout if timeout is not None else self.timeout,
            ) as response:
                chunks = []
                async for chunk in response.aiter_bytes():
                    if on_chunk is not None:
                        on_chunk(chunk)
                    chunks.append(chunk)
        except httpx.TimeoutException as error:
            raise TransientError(
                f"{method} {url} timed out ({type(error).__name__})"
            ) from error
        except TimeoutError:
            raise TransientError(
                f"{method} {url} timed out: the response took longer than "
                f"{deadline:.0f} s in total"
            ) from None
        except httpx.TransportError as error:
            raise TransientError(
                f"{method} {url} failed: {type(error).__name__}: {error}"
            ) from error

        body = b"".join(chunks)
        self._raise_for_status(method, url, response.status_code, body)
        if not body.strip() and expect is None:
            return None
        try:
            # A page of the first pull holds tens of thousands of documents.
            with gc_paused(len(body) // 1_000):
                result = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            bad = BadResponse(
                f"{method} {url} returned {response.status_code} with a body that "
                f"is not JSON ({error}); it starts with {body[:60]!r}",
                response.status_code,
            )
            bad.too_deep = "depth limit" in str(error)
            raise bad from None
        if expect is not None and not isinstance(result, expect):
            raise BadResponse(
                f"{method} {url} returned JSON {_json_type(result)} where the "
                f"protocol defines {_json_type(expect())}",
                response.status_code,
            )
        return result

    @staticmethod
    def _raise_for_status(method: str, url: str, status: int, body: bytes) -> None:
        if status < 400:
            return
        try:
            detail = orjson.loads(body)
            reason = f"{detail.get('error')}: {detail.get('reason')}"
        except (orjson.JSONDecodeError, AttributeError):
            reason = body[:200].decode(errors="replace")
        message = f"{method} {url} returned {status} ({reason})"
        if status in (401, 403):
            raise AuthError(
                message + "; check the user, password and database permissions "
                "in the database URL",
                status,
            )
        if status == 404:
            raise NotFound(message, status)
        if status == 409:
            raise DocConflict(message, status)
        if status >= 500 or status == 429:
            raise TransientError(message, status)
        raise CouchError(message, status)

    # -- the database API used by replication

    async def info(self) -> dict[str, Any]:
        return await self.request("GET")

    async def create(self) -> None:
        try:
            await self.request("PUT", expect=None)
        except CouchError as error:
            if error.status != 412:  # 412: created meanwhile by someone else
                raise

    async def get_local(self, local_id: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", doc_path(local_id))
        except NotFound:
            return None

    async def put_local(self, local_id: str, doc: dict[str, Any]) -> str:
        result = await self.request("PUT", doc_path(local_id), json=doc)
        return result.get("rev", "")

    async def changes(
        self,
        since: Any,
        *,
        limit: int,
        include_docs: bool = False,
        longpoll: bool = False,
        heartbeat_ms: int = 10_000,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> dict[str, Any]:
        """Read `_changes?style=all_docs` after the opaque sequence `since`."""
        params = {
            "style": "all_docs",
            "since": _seq_param(since),
            "limit": str(limit),
            "feed": "longpoll" if longpoll else "normal",
        }
        timeout: Any = None
        headers = None
        if include_docs:
            params["include_docs"] = "true"
        if longpoll:
            params["heartbeat"] = str(heartbeat_ms)
            # Without a heartbeat for three intervals the server is gone.
            timeout = httpx.Timeout(self.timeout, read=3 * heartbeat_ms / 1000)
            # A compressing server (PouchDB Server 4.2) buffers heartbeats
            # until its gzip block fills, so ask for the plain body.
            headers = {"Accept-Encoding": "identity"}
        result = await self.request(
            "GET",
            "_changes",
            params=params,
            timeout=timeout,
            on_chunk=on_chunk,
            headers=headers,
        )
        rows = result.get("results", [])
        if not isinstance(rows, list) or not all(
            isinstance(row, dict) and "id" in row and "seq" in row for row in rows
        ):
            raise BadResponse(
                f"GET {self.url}/_changes returned 'results' that is not a list of "
                f"change rows with 'id' and 'seq'"
            )
        return result

    async def revs_diff(self, revs: dict[str, list[str]]) -> dict[str, Any]:
        if not revs:
            return {}
        return await self.request("POST", "_revs_diff", json=revs) or {}

    async def bulk_get(self, requested: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Fetch revisions with `_revisions` through `_bulk_get`.

        Raises NotFound or CouchError (400, 405) when the server lacks
        `_bulk_get`, so the caller can fall back to `open_revs`.
        """
        body = {"docs": [{"id": doc_id, "rev": rev} for doc_id, rev in requested]}
        result = await self.request(
            "POST",
            "_bulk_get",
            params={"revs": "true", "latest": "true"},
            json=body,
        )
        entries = result.get("results", [])
        if not isinstance(entries, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("docs", []), list)
            for entry in entries
        ):
            raise BadResponse(
                f"POST {self.url}/_bulk_get returned 'results' that is not a list "
                f"of {{'id', 'docs': [...]}} entries"
            )
        docs = []
        for entry in entries:
            for item in entry.get("docs", []):
                if isinstance(item, dict) and isinstance(item.get("ok"), dict):
                    docs.append(item["ok"])
        return docs

    def open_revs_batches(self, doc_id: str, revs: list[str]) -> list[list[str]]:
        """Split `revs` so that each `open_revs` request URL fits MAX_URL_BYTES."""
        fixed = len(f"{self.url}/{doc_path(doc_id)}?revs=true&latest=true&open_revs=")
        budget = MAX_URL_BYTES - fixed
        batches: list[list[str]] = []
        current: list[str] = []
        for rev in revs:
            candidate = current + [rev]
            if current and len(quote(orjson.dumps(candidate), safe="")) > budget:
                batches.append(current)
                candidate = [rev]
            current = candidate
        if current:
            batches.append(current)
        return batches

    async def open_revs(self, doc_id: str, revs: list[str]) -> list[dict[str, Any]]:
        """Fetch leaves of one document with `GET doc?open_revs=[...]`, batched."""
        docs = []
        for batch in self.open_revs_batches(doc_id, revs):
            params = {
                "revs": "true",
                "latest": "true",
                "open_revs": orjson.dumps(batch).decode(),
            }
            result = await self.request(
                "GET", doc_path(doc_id), params=params, expect=list
            )
            docs.extend(
                item["ok"]
                for item in result
                if isinstance(item, dict) and isinstance(item.get("ok"), dict)
            )
        return docs

    async def bulk_docs(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store revisions as they are (`new_edits: false`), return the errors."""
        result = await self.request(
            "POST", "_bulk_docs", json={"docs": docs, "new_edits": False}, expect=list
        )
        if not all(isinstance(row, dict) for row in result):
            raise BadResponse(
                f"POST {self.url}/_bulk_docs returned an array whose rows are not "
                f"all objects"
            )
        return [row for row in result if "error" in row]


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
