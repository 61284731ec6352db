"""Pull and push replication between a CouchDB database and the local store.

Each replication follows the CouchDB Replication Protocol. It verifies the
peers, derives the replication id and finds the start sequence from both
checkpoints. Then each batch reads `_changes`, asks `_revs_diff` what the
target lacks, fetches those revisions with their history and stores them.
Only after that is the checkpoint written on both sides.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.sync import checkpoint
from app.sync.client import BadResponse, CouchError, Database, NotFound
from app.sync.store import LOCAL_PREFIX, Store

log = logging.getLogger("app.sync")

# Rows per `_changes` request on the normal path (PouchDB's default is 100).
BATCH_SIZE = 1_000

# Rows per `_changes?include_docs=true` request on the fast path.
FAST_BATCH_SIZE = 10_000

# Documents stored between two yields to the event loop on the fast path.
STORE_SLICE = 2_000

# Revisions per `_bulk_get` request.
BULK_GET_SIZE = 500

# Documents per `_bulk_docs` request when pushing.
PUSH_BATCH_SIZE = 500

# Interval between heartbeats of a longpoll `_changes` request, in ms.
HEARTBEAT_MS = 10_000


@dataclass
class Stats:
    """Counters that SyncService.progress() exposes."""

    docs_read: int = 0
    docs_written: int = 0
    docs_pushed: int = 0
    push_failures: int = 0
    last_seq: Any = None
    # time.monotonic() when the replica was last known to hold every change.
    caught_up_at: float | None = None

    def mark_caught_up(self) -> None:
        self.caught_up_at = time.monotonic()


class Replication:
    """State shared by pull and push: peers, ids, session and checkpoints."""

    direction = ""

    def __init__(self, remote: Database, store: Store, stats: Stats) -> None:
        self.remote = remote
        self.store = store
        self.stats = stats
        self.session_id = uuid.uuid4().hex
        self.session_started = time.time()
        self.rep_id = ""
        self.since: Any = checkpoint.LOWEST_SEQ
        self._remote_checkpoint: dict[str, Any] | None = None

    @property
    def checkpoint_id(self) -> str:
        return f"{LOCAL_PREFIX}{self.rep_id}"

    def _options(self) -> dict[str, Any]:
        return {"direction": self.direction}

    def _endpoints(self) -> tuple[str, str]:
        raise NotImplementedError

    async def _verify_peers(self) -> None:
        await self.remote.info()

    async def prepare(self) -> None:
        """Verify the peers and find the start sequence from the checkpoints."""
        await self._verify_peers()
        source, target = self._endpoints()
        self.rep_id = checkpoint.replication_id(
            self.store.replica_id, source, target, self._options()
        )
        self._remote_checkpoint = await self.remote.get_local(self.checkpoint_id)
        local_checkpoint = self.store.get_local(self.checkpoint_id)
        if self.direction == "pull":
            self.since = checkpoint.start_seq(self._remote_checkpoint, local_checkpoint)
        else:
            self.since = checkpoint.start_seq(local_checkpoint, self._remote_checkpoint)
        log.info(
            "event=sync_%s_start replication_id=%s since=%s remote_checkpoint=%s "
            "local_checkpoint=%s",
            self.direction,
            self.rep_id,
            self.since,
            self._remote_checkpoint is not None,
            local_checkpoint is not None,
        )

    async def write_checkpoint(self, seq: Any, stats: dict[str, int]) -> None:
        """Record `seq` on both sides; call only once its documents are stored."""
        local_previous = self.store.get_local(self.checkpoint_id)
        local_doc = checkpoint.checkpoint_doc(
            local_previous, self.session_id, seq, self.session_started, stats
        )
        remote_doc = checkpoint.checkpoint_doc(
            self._remote_checkpoint, self.session_id, seq, self.session_started, stats
        )
        if self._remote_checkpoint and "_rev" in self._remote_checkpoint:
            remote_doc["_rev"] = self._remote_checkpoint["_rev"]
        self.store.put_local(self.checkpoint_id, local_doc)
        remote_doc["_rev"] = await self._put_remote_checkpoint(remote_doc)
        self._remote_checkpoint = remote_doc

    async def _put_remote_checkpoint(self, doc: dict[str, Any]) -> str:
        try:
            return await self.remote.put_local(self.checkpoint_id, doc)
        except CouchError as error:
            if error.status != 409:
                raise
        # Another writer moved the document: take its _rev and write again.
        current = await self.remote.get_local(self.checkpoint_id)
        if current is not None:
            doc["_rev"] = current["_rev"]
        else:
            doc.pop("_rev", None)
        return await self.remote.put_local(self.checkpoint_id, doc)


class PullReplication(Replication):
    """Replicate the remote database into the local store."""

    direction = "pull"

    def __init__(
        self,
        remote: Database,
        store: Store,
        stats: Stats,
        *,
        batch_size: int = BATCH_SIZE,
        fast_batch_size: int = FAST_BATCH_SIZE,
        heartbeat_ms: int = HEARTBEAT_MS,
        use_bulk_get: bool = True,
    ) -> None:
        super().__init__(remote, store, stats)
        self.batch_size = batch_size
        self.fast_batch_size = fast_batch_size
        self.heartbeat_ms = heartbeat_ms
        self.use_bulk_get = use_bulk_get
        self._counts = {"docs_read": 0, "docs_written": 0}

    def _endpoints(self) -> tuple[str, str]:
        return self.remote.url, "local"

    # -- one-shot

    async def pull_until_caught_up(self) -> None:
        """Pull every change the remote has now; fast path for an empty store."""
        if self.store.doc_count == 0 and self.since == checkpoint.LOWEST_SEQ:
            try:
                await self._fast_pull()
            except BadResponse as error:
                if not error.too_deep:
                    raise
                # The normal path fetches documents in small batches and can
                # skip the one it cannot parse.
                log.warning(
                    "event=sync_pull_fast_path_abandoned since=%s error=%r",
                    self.since,
                    str(error),
                )
        while True:
            response = await self.remote.changes(self.since, limit=self.batch_size)
            await self._apply_changes(response)
            if self._is_caught_up(response, self.batch_size):
                self.stats.mark_caught_up()
                return

    @staticmethod
    def _is_caught_up(response: dict[str, Any], limit: int) -> bool:
        # CouchDB 2 and later report `pending`; PouchDB Server does not, and
        # a short page means the end of the feed there.
        if "pending" in response:
            return response["pending"] == 0
        return len(response.get("results", [])) < limit

    # -- continuous

    async def pull_continuously(
        self, stop: asyncio.Event, on_batch: Callable[[], None]
    ) -> None:
        """Follow the remote's changes with longpoll until `stop` is set.

        `on_batch` runs after every response that was stored.
        """
        while not stop.is_set():
            response = await self.remote.changes(
                self.since,
                limit=self.batch_size,
                longpoll=True,
                heartbeat_ms=self.heartbeat_ms,
                on_chunk=self._on_longpoll_chunk,
            )
            await self._apply_changes(response)
            on_batch()
            if self._is_caught_up(response, self.batch_size):
                self.stats.mark_caught_up()

    def _on_longpoll_chunk(self, chunk: bytes) -> None:
        # A heartbeat while waiting means the remote has nothing newer.
        if not chunk.strip():
            self.stats.mark_caught_up()

    # -- the normal path: _changes, _revs_diff, _bulk_get, store, checkpoint

    async def _apply_changes(self, response: dict[str, Any]) -> None:
        rows = response.get("results", [])
        if not rows:
            self._advance(response.get("last_seq", self.since))
            return
        leaves: dict[str, list[str]] = {}
        for row in rows:
            revs = leaves.setdefault(row["id"], [])
            revs.extend(change["rev"] for change in row.get("changes", []))
        missing = self.store.revs_diff(leaves)
        requested = [
            (doc_id, rev)
            for doc_id, entry in missing.items()
            for rev in entry["missing"]
        ]
        docs = await self._fetch_revisions(requested)
        self._store(docs)
        await self._checkpoint(response.get("last_seq", rows[-1]["seq"]))

    def _store(self, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        self.store.bulk_docs(docs, new_edits=False)
        self.stats.docs_written += len(docs)
        self._counts["docs_written"] += len(docs)

    async def _checkpoint(self, seq: Any) -> None:
        await self.write_checkpoint(seq, dict(self._counts))
        self._advance(seq)

    def _advance(self, seq: Any) -> None:
        self.since = seq
        self.stats.last_seq = seq

    async def _fetch_revisions(
        self, requested: list[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        """Fetch the named revisions with `_revisions`, latest leaves first."""
        docs: list[dict[str, Any]] = []
        for start in range(0, len(requested), BULK_GET_SIZE):
            chunk = requested[start : start + BULK_GET_SIZE]
            docs.extend(await self._fetch_chunk(chunk))
        self.stats.docs_read += len(docs)
        self._counts["docs_read"] += len(docs)
        return docs

    async def _fetch_chunk(self, chunk: list[tuple[str, str]]) -> list[dict[str, Any]]:
        if self.use_bulk_get:
            try:
                return await self.remote.bulk_get(chunk)
            except BadResponse as error:
                if not error.too_deep:
                    raise
                return await self._fetch_around_too_deep(chunk, error)
            except NotFound:
                self._drop_bulk_get("404")
            except CouchError as error:
                if error.status not in (400, 405, 501):
                    raise
                self._drop_bulk_get(str(error.status))
        by_doc: dict[str, list[str]] = {}
        for doc_id, rev in chunk:
            by_doc.setdefault(doc_id, []).append(rev)
        docs = []
        for doc_id, revs in by_doc.items():
            docs.extend(await self.remote.open_revs(doc_id, revs))
        return docs

    async def _fetch_around_too_deep(
        self, chunk: list[tuple[str, str]], error: BadResponse
    ) -> list[dict[str, Any]]:
        """Split a `_bulk_get` that failed on a too deeply nested document until
        that revision is alone, and skip it, so one document cannot stall the
        pull for good. The replica then lacks that revision."""
        if len(chunk) == 1:
            doc_id, rev = chunk[0]
            log.error(
                "event=sync_pull_doc_skipped doc_id=%r rev=%s error=%r",
                doc_id,
                rev,
                str(error),
            )
            return []
        middle = len(chunk) // 2
        return [
            *await self._fetch_chunk(chunk[:middle]),
            *await self._fetch_chunk(chunk[middle:]),
        ]

    def _drop_bulk_get(self, status: str) -> None:
        log.warning(
            "event=sync_pull_bulk_get_unavailable status=%s fallback=open_revs", status
        )
        self.use_bulk_get = False

    # -- the fast path for an empty store

    async def _fast_pull(self) -> None:
        """Take documents straight from `_changes?include_docs=true`.

        A document with one leaf is stored as that leaf without its ancestors
        (`include_docs` carries no `_revisions`). Winner and conflicts depend
        only on leaves, and a later revision's `_revisions` names its parent,
        so the tree joins up when the document changes again. Documents with
        more than one leaf are fetched with full history through `_bulk_get`.
        The next page is requested while the current one is being stored.
        """
        log.info(
            "event=sync_pull_fast_path since=%s batch=%d",
            self.since,
            self.fast_batch_size,
        )
        next_page = asyncio.create_task(self._fast_page(self.since))
        try:
            while True:
                response = await next_page
                rows = response.get("results", [])
                last_seq = response.get("last_seq", rows[-1]["seq"] if rows else None)
                done = self._is_caught_up(response, self.fast_batch_size)
                if not done:
                    next_page = asyncio.create_task(self._fast_page(last_seq))
                await self._store_fast_page(rows)
                if rows:
                    await self._checkpoint(last_seq)
                else:
                    self._advance(last_seq if last_seq is not None else self.since)
                if done:
                    return
        finally:
            if not next_page.done():
                next_page.cancel()

    async def _fast_page(self, since: Any) -> dict[str, Any]:
        return await self.remote.changes(
            since, limit=self.fast_batch_size, include_docs=True
        )

    async def _store_fast_page(self, rows: list[dict[str, Any]]) -> None:
        single: list[dict[str, Any]] = []
        several: list[tuple[str, str]] = []
        for row in rows:
            revs = [change["rev"] for change in row.get("changes", [])]
            doc = row.get("doc")
            if len(revs) == 1 and doc is not None and doc.get("_rev") == revs[0]:
                single.append(doc)
            else:
                several.extend((row["id"], rev) for rev in revs)
        self.stats.docs_read += len(single)
        self._counts["docs_read"] += len(single)
        # Storing in slices, with a yield to the event loop after each,
        # lets the request for the next page go out while this one is
        # stored, and keeps /readyz answering during the pull.
        for start in range(0, len(single), STORE_SLICE):
            await asyncio.sleep(0)
            self._store(single[start : start + STORE_SLICE])
        if several:
            self._store(await self._fetch_revisions(several))


class PushReplication(Replication):
    """Replicate local edits from the store to the remote database."""

    direction = "push"

    def __init__(
        self,
        remote: Database,
        store: Store,
        stats: Stats,
        *,
        batch_size: int = PUSH_BATCH_SIZE,
        create_target: bool = False,
    ) -> None:
        super().__init__(remote, store, stats)
        self.batch_size = batch_size
        self.create_target = create_target

    def _endpoints(self) -> tuple[str, str]:
        return "local", self.remote.url

    async def _verify_peers(self) -> None:
        try:
            await self.remote.info()
        except NotFound:
            if not self.create_target:
                raise
            log.info("event=sync_push_create_target database=%s", self.remote.url)
            await self.remote.create()

    async def push_pending(self) -> int:
        """Push every local edit after the checkpoint; return how many."""
        pushed = 0
        while True:
            scanned_to = self.store.update_seq
            rows = self.store.changes(self.since, self.batch_size, local_only=True)
            if not rows:
                self.since = max(self.since, scanned_to)
                return pushed
            pushed += await self._push_rows(rows)
            if len(rows) < self.batch_size:
                self.since = max(rows[-1]["seq"], scanned_to)
            else:
                self.since = rows[-1]["seq"]
            await self.write_checkpoint(self.since, {"docs_written": pushed})

    async def _push_rows(self, rows: list[dict[str, Any]]) -> int:
        leaves = {row["id"]: [c["rev"] for c in row["changes"]] for row in rows}
        missing = await self.remote.revs_diff(leaves)
        docs = []
        for doc_id, entry in missing.items():
            docs.extend(self.store.open_revs(doc_id, entry.get("missing", [])))
        if not docs:
            return 0
        errors = await self.remote.bulk_docs(docs)
        for error in errors:
            log.error(
                "event=sync_push_doc_failed doc_id=%s error=%r reason=%s",
                error.get("id"),
                error.get("error"),
                error.get("reason"),
            )
        self.stats.push_failures += len(errors)
        written = len(docs) - len(errors)
        self.stats.docs_pushed += written
        log.info("event=sync_push_batch docs=%d failures=%d", written, len(errors))
        return written
