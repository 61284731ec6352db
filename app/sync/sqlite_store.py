"""A replica in a SQLite file in WAL mode.

WAL lets several processes open the same file: while an old deploy still runs,
the new one reads and writes the same replica, and a restart resumes from the
checkpoint stored in the file instead of pulling everything again. Writers
take the database lock with BEGIN IMMEDIATE, so a read-then-write (a local
edit checking its `_rev`) is atomic across processes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from app.sync.revtree import DocTree
from app.sync.store import Record, Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    local_edit INTEGER NOT NULL DEFAULT 0,
    tree BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS docs_by_seq ON docs (seq);
CREATE TABLE IF NOT EXISTS local_docs (
    id TEXT PRIMARY KEY,
    body BLOB NOT NULL
);
"""

# How long a writer waits for another process's transaction, in milliseconds.
BUSY_TIMEOUT_MS = 10_000

# SQLite before 3.32 allows at most 999 host parameters per statement.
MAX_PARAMS = 900


class SQLiteStore(Store):
    """A store in one SQLite file that several processes may open at once."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(
                f"cannot open replica {str(self.path)!r}: directory "
                f"{str(self.path.parent)!r} does not exist; create it first"
            )
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise OSError(
                f"cannot switch replica {str(self.path)!r} to WAL mode (got "
                f"{mode!r}); put it on a local file system"
            )
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(SCHEMA)
        self._depth = 0

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    @staticmethod
    def _record(row: tuple) -> Record:
        doc_id, seq, local_edit, tree = row
        return Record(
            doc_id, DocTree.from_json(orjson.loads(tree)), seq, bool(local_edit)
        )

    def _load(self, doc_id: str) -> Record | None:
        row = self._db.execute(
            "SELECT id, seq, local_edit, tree FROM docs WHERE id = ?", (doc_id,)
        ).fetchone()
        return None if row is None else self._record(row)

    def _load_many(self, doc_ids: Iterable[str]) -> dict[str, Record]:
        ids = list(dict.fromkeys(doc_ids))
        records: dict[str, Record] = {}
        for start in range(0, len(ids), MAX_PARAMS):
            chunk = ids[start : start + MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT id, seq, local_edit, tree FROM docs WHERE id IN ({marks})",
                chunk,
            )
            for row in rows:
                records[row[0]] = self._record(row)
        return records

    def _save(self, records: list[Record]) -> None:
        with self._transaction():
            (newest,) = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM docs"
            ).fetchone()
            rows = []
            for offset, record in enumerate(records, start=1):
                record.seq = newest + offset
                rows.append(
                    (
                        record.doc_id,
                        record.seq,
                        int(record.local_edit),
                        orjson.dumps(record.tree.to_json()),
                    )
                )
            self._db.executemany(
                "INSERT INTO docs (id, seq, local_edit, tree) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, "
                "local_edit = excluded.local_edit, tree = excluded.tree",
                rows,
            )

    def _changes_after(
        self, since: int, limit: int | None, local_only: bool
    ) -> list[Record]:
        query = "SELECT id, seq, local_edit, tree FROM docs WHERE seq > ?"
        if local_only:
            query += " AND local_edit = 1"
        query += " ORDER BY seq LIMIT ?"
        rows = self._db.execute(query, (since, -1 if limit is None else limit))
        return [self._record(row) for row in rows]

    def get_local(self, local_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT body FROM local_docs WHERE id = ?", (local_id,)
        ).fetchone()
        return None if row is None else orjson.loads(row[0])

    def _write_local(self, local_id: str, doc: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO local_docs (id, body) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            (local_id, orjson.dumps(doc)),
        )

    @property
    def update_seq(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM docs").fetchone()[0]

    @property
    def doc_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    def doc_ids(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT id FROM docs ORDER BY id")]
