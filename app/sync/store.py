"""The local replica: CouchDB's document model over a pluggable backend.

`Store` holds the document logic (revision trees, winners, local edits,
`new_edits: false` merges, `_revs_diff`, the local changes feed and `_local`
documents). A backend only loads and saves `Record`s: `MemoryStore` keeps
them in dicts, `app.sync.sqlite_store.SQLiteStore` in a SQLite file.
"""

from __future__ import annotations

import gc
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from app.sync.revtree import (
    DocTree,
    InvalidRevision,
    content_of,
    new_rev_id,
    parse_rev,
    revision_path,
)

LOCAL_PREFIX = "_local/"
REPLICA_ID_DOC = "_local/vatfleet-replica"


# Batches at least this large run with the cyclic garbage collector paused.
GC_PAUSE_MIN_DOCS = 1_000


@contextmanager
def gc_paused(count: int) -> Iterator[None]:
    """Pause the cyclic GC while `count` new objects are built, if many.

    Storing 50,000 documents allocates a few hundred thousand containers,
    and the collections that triggers took about half of the time of
    `bulk_docs` (measured with CPython 3.11). Stored documents form no
    reference cycles, so the pause leaves no garbage behind.
    """
    if count < GC_PAUSE_MIN_DOCS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Conflict(Exception):
    """A local edit named a stale `_rev`, or none for an existing document."""


class InvalidDocument(ValueError):
    """A document the store cannot take, with the reason and the fix."""


@dataclass(slots=True)
class Record:
    """One document as a backend stores it."""

    doc_id: str
    tree: DocTree
    seq: int = 0
    # True once the document was ever edited here, so push looks at it.
    local_edit: bool = False


class Store(ABC):
    """A CouchDB-like database of documents with revision trees."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    # -- backend primitives

    @abstractmethod
    def _load(self, doc_id: str) -> Record | None: ...

    @abstractmethod
    def _load_many(self, doc_ids: Iterable[str]) -> dict[str, Record]: ...

    @abstractmethod
    def _save(self, records: list[Record]) -> None:
        """Store `records`, giving each a new local sequence, in one step."""

    @abstractmethod
    @contextmanager
    def _transaction(self) -> Iterator[None]: ...

    @abstractmethod
    def _changes_after(
        self, since: int, limit: int | None, local_only: bool
    ) -> list[Record]: ...

    @abstractmethod
    def get_local(self, local_id: str) -> dict[str, Any] | None:
        """Return the `_local/...` document, or None."""

    @abstractmethod
    def _write_local(self, local_id: str, doc: dict[str, Any]) -> None: ...

    @property
    @abstractmethod
    def update_seq(self) -> int:
        """The local sequence of the newest change (0 for an empty store)."""

    @property
    @abstractmethod
    def doc_count(self) -> int:
        """Number of documents, deleted ones included."""

    @abstractmethod
    def doc_ids(self) -> list[str]: ...

    def close(self) -> None:
        """Release the backend's resources (a no-op for memory)."""

    # -- identity

    @property
    def replica_id(self) -> str:
        """The id of this replica, persisted in a `_local` document."""
        with self._transaction():
            doc = self.get_local(REPLICA_ID_DOC)
            if doc is None:
                doc = {"replica_id": uuid.uuid4().hex}
                self.put_local(REPLICA_ID_DOC, doc)
        return doc["replica_id"]

    # -- reading

    def get(
        self,
        doc_id: str,
        *,
        rev: str | None = None,
        revs: bool = False,
        conflicts: bool = False,
    ) -> dict[str, Any] | None:
        """Return the winning revision of `doc_id` (or leaf `rev`).

        None when the document is missing, or when its winner is deleted and
        no `rev` was named.
        """
        if doc_id.startswith(LOCAL_PREFIX):
            return self.get_local(doc_id)
        record = self._load(doc_id)
        if record is None:
            return None
        tree = record.tree
        if rev is None:
            rev = tree.winner()
            if tree.is_deleted(rev):
                return None
        elif rev not in tree.leaves:
            return None
        return self._render(record, rev, revs=revs, conflicts=conflicts)

    def _render(
        self, record: Record, rev: str, *, revs: bool, conflicts: bool
    ) -> dict[str, Any]:
        tree = record.tree
        doc = {"_id": record.doc_id, "_rev": rev, **tree.leaves[rev]}
        if revs:
            doc["_revisions"] = tree.revisions_field(rev)
        if conflicts:
            losers = tree.conflicts()
            if losers:
                doc["_conflicts"] = losers
        return doc

    def leaves(self, doc_id: str) -> dict[str, bool]:
        """Return every leaf revision of `doc_id` mapped to its deleted flag."""
        record = self._load(doc_id)
        if record is None:
            return {}
        return {rev: record.tree.is_deleted(rev) for rev in record.tree.leaves}

    def tree(self, doc_id: str) -> DocTree | None:
        record = self._load(doc_id)
        return None if record is None else record.tree

    def open_revs(self, doc_id: str, revs: list[str]) -> list[dict[str, Any]]:
        """Return the named leaves of `doc_id` with `_revisions` (for push)."""
        record = self._load(doc_id)
        if record is None:
            return []
        return [
            self._render(record, rev, revs=True, conflicts=False)
            for rev in revs
            if rev in record.tree.leaves
        ]

    def revs_diff(self, requested: dict[str, list[str]]) -> dict[str, dict]:
        """Return, per document, the revisions this store does not have."""
        records = self._load_many(requested)
        result: dict[str, dict] = {}
        for doc_id, revs in requested.items():
            record = records.get(doc_id)
            known = record.tree.parents if record is not None else {}
            missing = [rev for rev in revs if rev not in known]
            if missing:
                result[doc_id] = {"missing": missing}
        return result

    def changes(
        self, since: int = 0, limit: int | None = None, *, local_only: bool = False
    ) -> list[dict[str, Any]]:
        """Return the local changes feed after local sequence `since`.

        `local_only` keeps the documents that were ever edited here: the ones
        a push must look at. `_local` documents never appear.
        """
        rows = []
        for record in self._changes_after(since, limit, local_only):
            tree = record.tree
            winner = tree.winner()
            row = {
                "seq": record.seq,
                "id": record.doc_id,
                "changes": [{"rev": rev} for rev in tree.leaves],
            }
            if tree.is_deleted(winner):
                row["deleted"] = True
            rows.append(row)
        return rows

    # -- local edits

    def put(self, doc: dict[str, Any]) -> str:
        """Store a local edit and return its new revision.

        `_rev` must name a current leaf of an existing document; it may be
        left out for a new document or one whose winner is deleted. Raises
        Conflict otherwise, like CouchDB's 409.
        """
        doc_id = doc.get("_id") or uuid.uuid4().hex
        if not isinstance(doc_id, str):
            raise InvalidDocument(f"invalid _id {doc_id!r}: expected a string")
        if doc_id.startswith(LOCAL_PREFIX):
            return self.put_local(doc_id, doc)
        if doc_id.startswith("_") and not doc_id.startswith("_design/"):
            raise InvalidDocument(
                f"invalid _id {doc_id!r}: only _design/ and _local/ ids may "
                "start with an underscore"
            )
        body = content_of(doc)
        deleted = bool(body.get("_deleted"))

        with self._transaction():
            record = self._load(doc_id)
            parent = self._parent_for_edit(doc_id, record, doc.get("_rev"))
            generation = parse_rev(parent)[0] + 1 if parent else 1
            rev = f"{generation}-{new_rev_id(parent, deleted, body)}"
            if record is None:
                record = Record(doc_id, DocTree())
            path = [rev, parent] if parent else [rev]
            record.tree.merge_path(path, body)
            record.local_edit = True
            self._save([record])

        self._notify()
        return rev

    def delete(self, doc_id: str, rev: str) -> str:
        """Delete leaf `rev` of `doc_id` (a local edit) and return the new rev."""
        return self.put({"_id": doc_id, "_rev": rev, "_deleted": True})

    @staticmethod
    def _parent_for_edit(
        doc_id: str, record: Record | None, rev: str | None
    ) -> str | None:
        if record is None:
            if rev:
                raise Conflict(f"document {doc_id!r} not found, yet _rev {rev!r}")
            return None
        tree = record.tree
        if rev is None:
            winner = tree.winner()
            if not tree.is_deleted(winner):
                raise Conflict(
                    f"document {doc_id!r} exists: send its current _rev "
                    f"({winner!r}) to update it"
                )
            return winner
        if rev not in tree.leaves:
            raise Conflict(
                f"document {doc_id!r}: _rev {rev!r} is not a current revision "
                f"(current: {tree.winner()!r}); read the document again"
            )
        return rev

    def put_local(self, local_id: str, doc: dict[str, Any]) -> str:
        """Write a `_local` document (never replicated, no revision check)."""
        if not local_id.startswith(LOCAL_PREFIX):
            local_id = LOCAL_PREFIX + local_id
        with self._transaction():
            previous = self.get_local(local_id)
            counter = int(previous["_rev"].split("-")[1]) + 1 if previous else 1
            rev = f"0-{counter}"
            body = content_of(doc)
            body.update({"_id": local_id, "_rev": rev})
            self._write_local(local_id, body)
        return rev

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every local edit (the push loop wakes on it)."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    # -- replicated writes

    def bulk_docs(
        self, docs: list[dict[str, Any]], *, new_edits: bool = False
    ) -> list[dict[str, Any]]:
        """Store revisions as given (`new_edits: false`), merging their paths.

        Each document names its revision in `_rev` and, when known, its history
        in `_revisions`. With `new_edits=True` each document is a local edit.
        """
        if new_edits:
            return [self._put_result(doc) for doc in docs]

        paths = []
        for doc in docs:
            doc_id = doc.get("_id")
            if not isinstance(doc_id, str) or not doc_id:
                raise InvalidDocument(f"document without a valid _id: {doc!r:.200}")
            try:
                paths.append((doc_id, revision_path(doc), content_of(doc)))
            except InvalidRevision as error:
                raise InvalidDocument(str(error)) from error

        with self._transaction(), gc_paused(len(paths)):
            records = self._load_many(doc_id for doc_id, _, _ in paths)
            changed: dict[str, Record] = {}
            for doc_id, path, body in paths:
                record = records.get(doc_id)
                if record is None:
                    # A new document: its path is the whole tree.
                    parents = dict(pairwise(path))
                    parents[path[-1]] = None
                    tree = DocTree(parents, {path[0]: body})
                    record = records[doc_id] = Record(doc_id, tree)
                    changed[doc_id] = record
                elif record.tree.merge_path(path, body):
                    changed[doc_id] = record
            if changed:
                self._save(list(changed.values()))
        return [{"id": doc_id, "rev": path[0]} for doc_id, path, _ in paths]

    def _put_result(self, doc: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"id": doc.get("_id"), "rev": self.put(doc), "ok": True}
        except Conflict as error:
            return {"id": doc.get("_id"), "error": "conflict", "reason": str(error)}


class MemoryStore(Store):
    """A store in plain dicts: fast, and empty again after every restart.

    The replica id is random per process unless `replica_id` is given, so a
    restarted memory replica normally gets a new replication id. Either way
    its missing local checkpoint makes it start from sequence 0.
    """

    def __init__(self, replica_id: str | None = None) -> None:
        super().__init__()
        self._docs: dict[str, Record] = {}
        # Local sequence -> doc id, in sequence order (dicts keep insertion
        # order and an update moves the document to the end).
        self._by_seq: dict[int, str] = {}
        self._local: dict[str, dict[str, Any]] = {}
        self._seq = 0
        if replica_id is not None:
            self.put_local(REPLICA_ID_DOC, {"replica_id": replica_id})

    def _load(self, doc_id: str) -> Record | None:
        return self._docs.get(doc_id)

    def _load_many(self, doc_ids: Iterable[str]) -> dict[str, Record]:
        docs = self._docs
        return {doc_id: docs[doc_id] for doc_id in doc_ids if doc_id in docs}

    def _save(self, records: list[Record]) -> None:
        for record in records:
            if record.seq:
                self._by_seq.pop(record.seq, None)
            self._seq += 1
            record.seq = self._seq
            self._by_seq[self._seq] = record.doc_id
            self._docs[record.doc_id] = record

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        yield

    def _changes_after(
        self, since: int, limit: int | None, local_only: bool
    ) -> list[Record]:
        # Walk back from the newest change: callers mostly ask for recent ones.
        newer = []
        for seq in reversed(self._by_seq):
            if seq <= since:
                break
            newer.append(seq)
        records = []
        for seq in reversed(newer):
            record = self._docs[self._by_seq[seq]]
            if local_only and not record.local_edit:
                continue
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
        return records

    def get_local(self, local_id: str) -> dict[str, Any] | None:
        doc = self._local.get(local_id)
        return dict(doc) if doc is not None else None

    def _write_local(self, local_id: str, doc: dict[str, Any]) -> None:
        self._local[local_id] = doc

    @property
    def update_seq(self) -> int:
        return self._seq

    @property
    def doc_count(self) -> int:
        return len(self._docs)

    def doc_ids(self) -> list[str]:
        return list(self._docs)


def open_store(spec: str, *, replica_id: str | None = None) -> Store:
    """Open the replica named by `spec`: "memory" or "sqlite:PATH"."""
    if spec == "memory":
        return MemoryStore(replica_id=replica_id)
    kind, sep, path = spec.partition(":")
    if kind == "sqlite" and sep and path:
        from app.sync.sqlite_store import SQLiteStore

        return SQLiteStore(path)
    raise ValueError(
        f"invalid replica spec {spec!r}: expected 'memory' or 'sqlite:PATH' "
        "(set REPLICA to one of them)"
    )
