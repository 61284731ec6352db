"""Usage counters: counted in memory after each response, flushed in batches.

Each region writes only its own documents, `usage:<user id>:<region>:<day>`,
so two regions never edit the same document and replication cannot create a
conflict. Within a region, only this process's flusher writes them; a stale
`_rev` (another worker of the same region flushed in between) is retried.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import time

from app.auth import DocumentStore
from app.sync import Conflict

log = logging.getLogger("app.usage")

# (user id, UTC day, status class) -> requests
Counts = collections.Counter
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class UsageRecorder:
    """Counts requests per user and day; `flush` adds them to the store."""

    def __init__(self, store: DocumentStore, region: str) -> None:
        self.store = store
        self.region = region
        self.pending: Counts = collections.Counter()
        self.flushed_requests = 0
        self.flush_errors = 0
        self._day = ""
        self._day_ends = 0.0

    def record(self, user_id: str, status: int) -> None:
        """Count one finished request; cheap enough for the request path."""
        now = time.time()
        if now >= self._day_ends:
            self._day = time.strftime("%Y-%m-%d", time.gmtime(now))
            self._day_ends = (now // 86400 + 1) * 86400
        self.pending[
            (user_id, self._day, STATUS_CLASSES.get(status // 100, "other"))
        ] += 1

    def pending_requests(self) -> int:
        return sum(self.pending.values())

    async def flush(self) -> int:
        """Write the pending counts into the usage documents; return how many.

        Counts that fail to write stay pending for the next flush.
        """
        if not self.pending:
            return 0
        batch, self.pending = self.pending, collections.Counter()
        per_doc: dict[tuple[str, str], Counts] = collections.defaultdict(
            collections.Counter
        )
        for (user_id, day, status_class), count in batch.items():
            per_doc[(user_id, day)][status_class] += count

        written = 0
        for (user_id, day), counts in per_doc.items():
            try:
                self._add(user_id, day, counts)
            except Exception as error:  # noqa: BLE001 - the store's errors vary
                self.flush_errors += 1
                log.error(
                    "event=usage_flush_error region=%s user=%s day=%s error=%r",
                    self.region,
                    user_id,
                    day,
                    str(error),
                )
                for status_class, count in counts.items():
                    self.pending[(user_id, day, status_class)] += count
                continue
            written += sum(counts.values())
            # Let requests run between two documents.
            await asyncio.sleep(0)
        self.flushed_requests += written
        return written

    def _add(self, user_id: str, day: str, counts: Counts, attempts: int = 3) -> None:
        doc_id = f"usage:{user_id}:{self.region}:{day}"
        for attempt in range(attempts):
            doc = self.store.get(doc_id) or {
                "_id": doc_id,
                "type": "usage",
                "user": f"user:{user_id}",
                "region": self.region,
                "day": day,
                "requests": 0,
                "by_status": {},
            }
            doc = dict(doc)
            doc["requests"] = int(doc.get("requests", 0)) + sum(counts.values())
            by_status = dict(doc.get("by_status") or {})
            for status_class, count in counts.items():
                by_status[status_class] = int(by_status.get(status_class, 0)) + count
            doc["by_status"] = by_status
            doc["updated"] = datetime.datetime.now(datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            try:
                self.store.put(doc)
                return
            except Conflict:
                if attempt == attempts - 1:
                    raise
