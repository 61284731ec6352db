"""The local store on both backends: local edits, merges, feeds, SQLite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.sync import Conflict, InvalidDocument, open_store
from app.sync.store import REPLICA_ID_DOC, Store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path) -> Store:
    spec = "memory" if request.param == "memory" else f"sqlite:{tmp_path}/r.db"
    opened = open_store(spec)
    yield opened
    opened.close()


def test_put_creates_first_revision(store):
    rev = store.put({"_id": "user:1", "email": "a@example.test"})
    assert rev.startswith("1-")
    assert len(rev.split("-")[1]) == 32
    assert store.get("user:1") == {
        "_id": "user:1",
        "_rev": rev,
        "email": "a@example.test",
    }


def test_put_without_rev_on_existing_conflicts(store):
    store.put({"_id": "user:1"})
    with pytest.raises(Conflict, match="send its current _rev"):
        store.put({"_id": "user:1", "plan": "pro"})


def test_put_with_stale_rev_conflicts(store):
    first = store.put({"_id": "user:1", "plan": "free"})
    store.put({"_id": "user:1", "_rev": first, "plan": "pro"})
    with pytest.raises(Conflict, match="not a current revision"):
        store.put({"_id": "user:1", "_rev": first, "plan": "business"})


def test_put_with_rev_on_missing_conflicts(store):
    with pytest.raises(Conflict, match="not found"):
        store.put({"_id": "user:1", "_rev": "1-abc"})


def test_put_rejects_reserved_id(store):
    with pytest.raises(InvalidDocument, match="underscore"):
        store.put({"_id": "_users"})


def test_delete_then_recreate(store):
    first = store.put({"_id": "user:1", "plan": "free"})
    deleted = store.delete("user:1", first)
    assert deleted.startswith("2-")
    assert store.get("user:1") is None
    again = store.put({"_id": "user:1", "plan": "pro"})
    assert again.startswith("3-")
    assert store.get("user:1")["plan"] == "pro"
    assert store.get("user:1", revs=True)["_revisions"]["ids"][2] == first[2:]


def test_same_edit_gives_same_rev_on_two_stores(tmp_path):
    # Revision ids hash parent and content, so replicas agree on them.
    memory_store = open_store("memory")
    sqlite_store = open_store(f"sqlite:{tmp_path}/x.db")
    edit = {"_id": "a", "v": 1}
    assert memory_store.put(dict(edit)) == sqlite_store.put(dict(edit))


def test_bulk_docs_keeps_conflicts(store):
    store.bulk_docs(
        [
            {"_id": "d", "_rev": "1-a", "v": 0},
            {"_id": "d", "_revisions": {"start": 2, "ids": ["b", "a"]}, "v": 1},
            {"_id": "d", "_revisions": {"start": 2, "ids": ["c", "a"]}, "v": 2},
        ]
    )
    doc = store.get("d", conflicts=True)
    assert doc["_rev"] == "2-c"
    assert doc["_conflicts"] == ["2-b"]
    assert store.leaves("d") == {"2-b": False, "2-c": False}


def test_edit_of_losing_branch_is_allowed(store):
    store.bulk_docs(
        [
            {"_id": "d", "_rev": "1-a", "v": 1},
            {"_id": "d", "_rev": "1-b", "v": 2},
        ]
    )
    resolved = store.delete("d", "1-a")
    assert store.get("d", conflicts=True) == {"_id": "d", "_rev": "1-b", "v": 2}
    assert store.leaves("d")[resolved] is True


def test_revs_diff_reports_only_unknown(store):
    store.bulk_docs([{"_id": "d", "_revisions": {"start": 2, "ids": ["b", "a"]}}])
    diff = store.revs_diff({"d": ["1-a", "2-b", "3-c"], "e": ["1-x"]})
    assert diff == {"d": {"missing": ["3-c"]}, "e": {"missing": ["1-x"]}}


def test_changes_feed_orders_by_local_seq(store):
    store.put({"_id": "a"})
    rev_b = store.put({"_id": "b"})
    store.put({"_id": "c"})
    store.put({"_id": "b", "_rev": rev_b, "v": 2})
    rows = store.changes()
    assert [row["id"] for row in rows] == ["a", "c", "b"]
    assert [row["seq"] for row in rows] == [1, 3, 4]
    assert [row["id"] for row in store.changes(since=3)] == ["b"]
    assert store.update_seq == 4


def test_changes_local_only_skips_replicated(store):
    store.bulk_docs([{"_id": "remote", "_rev": "1-r"}])
    store.put({"_id": "mine"})
    assert [row["id"] for row in store.changes(local_only=True)] == ["mine"]


def test_local_docs_stay_out_of_changes(store):
    first = store.put({"_id": "_local/note", "v": 1})
    second = store.put({"_id": "_local/note", "v": 2})
    assert (first, second) == ("0-1", "0-2")
    assert store.get("_local/note")["v"] == 2
    assert store.changes() == []
    assert store.doc_count == 0


def test_replica_id_is_persisted(store):
    assert store.replica_id == store.replica_id
    assert store.get_local(REPLICA_ID_DOC)["replica_id"] == store.replica_id


def test_open_store_rejects_unknown_spec():
    with pytest.raises(ValueError, match="sqlite:PATH"):
        open_store("leveldb:/tmp/x")


def test_sqlite_reopen_keeps_docs_and_replica_id(tmp_path):
    spec = f"sqlite:{tmp_path}/replica.db"
    first = open_store(spec)
    rev = first.put({"_id": "user:1", "plan": "pro"})
    replica_id = first.replica_id
    first.close()
    again = open_store(spec)
    assert again.get("user:1")["_rev"] == rev
    assert again.replica_id == replica_id
    again.close()


WRITER = textwrap.dedent(
    """
    import sys
    from app.sync import open_store, Conflict
    store = open_store(sys.argv[1])
    name = sys.argv[2]
    conflicts = 0
    for number in range(200):
        store.put({"_id": f"{name}:{number}", "n": number})
        while True:
            doc = store.get("counter") or {"_id": "counter", "n": 0}
            doc["n"] += 1
            try:
                store.put(doc)
                break
            except Conflict:
                conflicts += 1
    print(conflicts)
    """
)


def test_sqlite_two_processes_write_at_once(tmp_path):
    spec = f"sqlite:{tmp_path}/shared.db"
    reader = open_store(spec)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, spec, name],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("old", "new")
    ]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    ids = reader.doc_ids()
    assert len([i for i in ids if i.startswith("old:")]) == 200
    assert len([i for i in ids if i.startswith("new:")]) == 200
    # Every increment survived: BEGIN IMMEDIATE makes check-and-write atomic.
    assert reader.get("counter")["n"] == 400
    assert len(reader.leaves("counter")) == 1
    seqs = [row["seq"] for row in reader.changes()]
    assert seqs == sorted(set(seqs))
    reader.close()
