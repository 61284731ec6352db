"""SyncService: keeps the local replica in step with the primary database.

`start()` launches two tasks. The pull task runs one full pull (the fast path
when the store is empty), flips `ready`, then follows the primary with
longpoll `_changes`. The push task sends local edits to the primary whenever
the store reports one, and every `push_interval` seconds in case another
process wrote to a shared SQLite replica. Both retry failures with
exponential backoff and jitter; 401 and 403 stop them and stay in
`last_error`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import httpx

from app.sync.client import AuthError, CouchError, Database, redact
from app.sync.replicator import (
    BATCH_SIZE,
    FAST_BATCH_SIZE,
    HEARTBEAT_MS,
    PullReplication,
    PushReplication,
    Stats,
)
from app.sync.store import Store

log = logging.getLogger("app.sync")


class SyncService:
    """Pull from and push to the primary database at `couchdb_url`.

    `couchdb_url` names the database and may carry credentials
    (http://user:password@host:5984/users); they are sent as HTTP basic auth
    and never logged.
    """

    def __init__(
        self,
        store: Store,
        couchdb_url: str,
        *,
        push: bool = True,
        batch_size: int = BATCH_SIZE,
        fast_batch_size: int = FAST_BATCH_SIZE,
        heartbeat_ms: int = HEARTBEAT_MS,
        push_interval: float = 5.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        use_bulk_get: bool = True,
        create_target: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self._url = couchdb_url
        self.safe_url = redact(couchdb_url)
        self.push_enabled = push
        self.batch_size = batch_size
        self.fast_batch_size = fast_batch_size
        self.heartbeat_ms = heartbeat_ms
        self.push_interval = push_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.use_bulk_get = use_bulk_get
        self.create_target = create_target
        self._transport = transport

        self.stats = Stats()
        self.ready = False
        self.failed = False
        # Tasks ("pull", "push") whose last attempt the server rejected with
        # 401 or 403; `failed` is True while any is.
        self._auth_failed: set[str] = set()
        # The newest unresolved error of each task, "pull" and "push".
        self._errors: dict[str, str | None] = {"pull": None, "push": None}
        self._ready_event = asyncio.Event()
        self._stop = asyncio.Event()
        self._push_wakeup = asyncio.Event()
        self._edits = 0
        self._edits_pushed = 0
        self._tasks: list[asyncio.Task] = []
        self._remote: Database | None = None
        store.add_listener(self._on_local_edit)

    # -- lifecycle

    async def start(self) -> None:
        """Start pulling (and pushing) in the background; returns at once."""
        if self._tasks:
            return
        self._remote = Database(self._url, transport=self._transport)
        self._stop.clear()
        log.info(
            "event=sync_start primary=%s replica_id=%s push=%s",
            self.safe_url,
            self.store.replica_id,
            self.push_enabled,
        )
        self._tasks.append(asyncio.create_task(self._run("pull", self._pull_forever)))
        if self.push_enabled:
            self._tasks.append(
                asyncio.create_task(self._run("push", self._push_forever))
            )

    async def stop(self) -> None:
        """Stop both tasks and close the HTTP client."""
        self._stop.set()
        self._push_wakeup.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._remote is not None:
            await self._remote.aclose()
            self._remote = None
        log.info(
            "event=sync_stop docs_read=%d docs_written=%d docs_pushed=%d",
            self.stats.docs_read,
            self.stats.docs_written,
            self.stats.docs_pushed,
        )

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first full pull.

        Returns False on timeout, or as soon as the server rejects the
        credentials (`failed`).
        """
        deadline = time.monotonic() + timeout
        while not self.ready and not self.failed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._ready_event.wait(), min(remaining, 0.2))
            except TimeoutError:
                continue
        return self.ready

    async def push_now(self, timeout: float = 30.0) -> None:
        """Wait until every local edit made so far has reached the primary."""
        target = self._edits
        deadline = time.monotonic() + timeout
        self._push_wakeup.set()
        while self._edits_pushed < target:
            if self.failed or time.monotonic() > deadline:
                raise TimeoutError(
                    f"local edits not pushed to {self.safe_url} within {timeout} s "
                    f"(last error: {self.last_error})"
                )
            await asyncio.sleep(0.05)

    @property
    def last_error(self) -> str | None:
        """The newest error that has not been resolved by a later success."""
        return self._errors["pull"] or self._errors["push"]

    def progress(self) -> dict[str, Any]:
        """Return the replication state as a JSON-safe dict for monitoring."""
        lag = None
        if self.stats.caught_up_at is not None:
            lag = round(time.monotonic() - self.stats.caught_up_at, 3)
        last_seq = self.stats.last_seq
        if last_seq is not None and not isinstance(last_seq, (int, str)):
            last_seq = str(last_seq)
        return {
            "ready": self.ready,
            "docs_read": self.stats.docs_read,
            "docs_written": self.stats.docs_written,
            "docs_pushed": self.stats.docs_pushed,
            "last_seq": last_seq,
            "lag_seconds": lag,
            "last_error": self.last_error,
            "pending_push": max(0, self._edits - self._edits_pushed),
            "failed": self.failed,
        }

    # -- the retry loop

    async def _run(self, name: str, body) -> None:
        attempt = 0
        while not self._stop.is_set():
            started = self.stats.docs_written + self.stats.docs_pushed
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except AuthError as error:
                # Wrong credentials need an operator, so `failed` tells readiness
                # checks at once. The task still retries slowly, because a
                # restarting server can reject valid credentials for a moment.
                self._errors[name] = str(error)
                self._auth_failed.add(name)
                self.failed = True
                log.error(
                    "event=sync_%s_failed error=%r retry_in=%.0f",
                    name,
                    redact(str(error)),
                    self.backoff_max,
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), self.backoff_max)
                except TimeoutError:
                    pass
            except Exception as error:  # every error is retried
                self._errors[name] = redact(f"{type(error).__name__}: {error}")
                progressed = self.stats.docs_written + self.stats.docs_pushed > started
                attempt = 1 if progressed else attempt + 1
                delay = self._backoff(attempt)
                log.warning(
                    "event=sync_%s_retry attempt=%d delay=%.2f error=%r",
                    name,
                    attempt,
                    delay,
                    self._errors[name],
                    # A traceback only for errors that are not the peer's.
                    exc_info=not isinstance(error, CouchError),
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass

    def _authenticated(self, name: str) -> None:
        """Clear `failed` once the server accepted the task's credentials again."""
        if name in self._auth_failed:
            self._auth_failed.discard(name)
            self.failed = bool(self._auth_failed)
            self._errors[name] = None
            log.info("event=sync_%s_auth_recovered", name)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    # -- pull

    async def _pull_forever(self) -> None:
        replication = PullReplication(
            self._remote,
            self.store,
            self.stats,
            batch_size=self.batch_size,
            fast_batch_size=self.fast_batch_size,
            heartbeat_ms=self.heartbeat_ms,
            use_bulk_get=self.use_bulk_get,
        )
        await replication.prepare()
        self._authenticated("pull")
        if not self.ready:
            started = time.monotonic()
            await replication.pull_until_caught_up()
            self.ready = True
            self._ready_event.set()
            self._errors["pull"] = None
            log.info(
                "event=sync_pull_ready docs=%d docs_read=%d seconds=%.3f last_seq=%s",
                self.store.doc_count,
                self.stats.docs_read,
                time.monotonic() - started,
                self.stats.last_seq,
            )
        await replication.pull_continuously(self._stop, self._on_pull_batch)

    def _on_pull_batch(self) -> None:
        self._errors["pull"] = None

    # -- push

    def _on_local_edit(self) -> None:
        self._edits += 1
        self._push_wakeup.set()

    async def _push_forever(self) -> None:
        replication = PushReplication(
            self._remote, self.store, self.stats, create_target=self.create_target
        )
        await replication.prepare()
        self._authenticated("push")
        while not self._stop.is_set():
            self._push_wakeup.clear()
            edits = self._edits
            await replication.push_pending()
            self._edits_pushed = edits
            self._errors["push"] = None
            try:
                await asyncio.wait_for(self._push_wakeup.wait(), self.push_interval)
            except TimeoutError:
                pass
