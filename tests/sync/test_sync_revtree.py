"""Revision trees, checkpoints, URLs and backoff, without peers."""

from __future__ import annotations

import pytest

from app.sync import SyncService, checkpoint, open_store
from app.sync.client import Database, doc_path, redact
from app.sync.revtree import DocTree, InvalidRevision, parse_rev, revision_path


def tree_with(*paths: tuple[list[str], dict]) -> DocTree:
    tree = DocTree()
    for path, body in paths:
        tree.merge_path(path, body)
    return tree


def test_winner_prefers_live_leaf_over_deleted():
    tree = tree_with((["3-zzz"], {"_deleted": True}), (["2-aaa"], {}))
    assert tree.winner() == "2-aaa"


def test_winner_compares_generation_as_number():
    tree = tree_with((["9-zzz"], {}), (["10-aaa"], {}))
    assert tree.winner() == "10-aaa"


def test_winner_breaks_tie_on_rev_id():
    tree = tree_with((["2-abc"], {}), (["2-abd"], {}))
    assert tree.winner() == "2-abd"
    assert tree.conflicts() == ["2-abc"]


def test_all_deleted_leaves_pick_highest():
    tree = tree_with((["2-a"], {"_deleted": True}), (["3-b"], {"_deleted": True}))
    assert tree.winner() == "3-b"
    assert tree.conflicts() == []
    assert tree.deleted_conflicts() == ["2-a"]


def test_merge_path_turns_parent_into_interior():
    tree = tree_with((["1-a"], {"v": 1}))
    assert tree.merge_path(["2-b", "1-a"], {"v": 2})
    assert list(tree.leaves) == ["2-b"]
    assert tree.revisions_field("2-b") == {"start": 2, "ids": ["b", "a"]}


def test_merge_path_known_revision_is_noop():
    tree = tree_with((["2-b", "1-a"], {"v": 2}))
    assert not tree.merge_path(["2-b", "1-a"], {"v": "other"})
    assert tree.leaves["2-b"] == {"v": 2}


def test_merge_path_fills_unknown_ancestors_of_stub():
    # A fast-path leaf stored without history joins the later full path.
    tree = tree_with((["2-b"], {"v": 2}))
    tree.merge_path(["3-c", "2-b", "1-a"], {"v": 3})
    assert list(tree.leaves) == ["3-c"]
    assert tree.ancestry("3-c") == ["3-c", "2-b", "1-a"]


def test_ancestor_arriving_late_is_not_a_leaf():
    tree = tree_with((["2-b", "1-a"], {"v": 2}))
    tree.merge_path(["1-a"], {"v": 1})
    assert list(tree.leaves) == ["2-b"]


def test_revision_path_from_revisions():
    doc = {"_id": "x", "_rev": "3-c", "_revisions": {"start": 3, "ids": ["c", "b"]}}
    assert revision_path(doc) == ["3-c", "2-b"]


@pytest.mark.parametrize(
    "doc",
    [
        {"_id": "x"},
        {"_id": "x", "_rev": "abc"},
        {"_id": "x", "_rev": "-abc"},
        {"_id": "x", "_revisions": {"start": 1, "ids": ["a", "b"]}},
        {"_id": "x", "_rev": "2-z", "_revisions": {"start": 2, "ids": ["a"]}},
    ],
)
def test_revision_path_rejects_invalid(doc):
    with pytest.raises(InvalidRevision):
        revision_path(doc)


def test_parse_rev_splits_generation():
    assert parse_rev("12-abc-def") == (12, "abc-def")


# -- checkpoint comparison


def log(session: str, seq, *history: tuple[str, object]) -> dict:
    return {
        "session_id": session,
        "source_last_seq": seq,
        "history": [{"session_id": s, "recorded_seq": q} for s, q in history],
    }


def test_start_seq_missing_target_checkpoint_is_zero():
    source = log("s1", "40-opaque", ("s1", "40-opaque"))
    assert checkpoint.start_seq(source, None) == 0
    assert checkpoint.start_seq(None, source) == 0


def test_start_seq_same_session_takes_source_seq():
    source = log("s2", "7-x", ("s2", "7-x"), ("s1", "3-x"))
    target = log("s2", "7-x", ("s2", "7-x"), ("s1", "3-x"))
    assert checkpoint.start_seq(source, target) == "7-x"


def test_start_seq_finds_newest_common_session():
    # The source wrote s3 but the target missed it: resume from s2.
    source = log("s3", 30, ("s3", 30), ("s2", 20), ("s1", 10))
    target = log("s2", 20, ("s2", 20), ("s1", 10))
    assert checkpoint.start_seq(source, target) == 20


def test_start_seq_target_ahead_uses_target_entry():
    source = log("s2", 20, ("s2", 20), ("s1", 10))
    target = log("s3", 30, ("s3", 30), ("s2", 20))
    assert checkpoint.start_seq(source, target) == 20


def test_start_seq_no_common_session_is_zero():
    source = log("a", 50, ("a", 50))
    target = log("b", 10, ("b", 10))
    assert checkpoint.start_seq(source, target) == 0


def test_checkpoint_doc_keeps_older_sessions():
    first = checkpoint.checkpoint_doc(None, "s1", 5, 0.0, {})
    second = checkpoint.checkpoint_doc(first, "s2", "9-x", 0.0, {})
    again = checkpoint.checkpoint_doc(second, "s2", "12-x", 0.0, {})
    assert [h["session_id"] for h in again["history"]] == ["s2", "s1"]
    assert again["history"][0]["recorded_seq"] == "12-x"
    assert again["source_last_seq"] == "12-x"


def test_replication_id_stable_and_distinct():
    first = checkpoint.replication_id("r1", "http://h/db", "local", {"d": "pull"})
    assert first == checkpoint.replication_id(
        "r1", "http://h/db", "local", {"d": "pull"}
    )
    assert first != checkpoint.replication_id(
        "r2", "http://h/db", "local", {"d": "pull"}
    )
    assert first != checkpoint.replication_id(
        "r1", "http://h/db", "local", {"d": "push"}
    )


# -- URLs


def test_redact_hides_userinfo():
    text = "GET http://admin:s3cret@db.example:5984/users failed"
    assert redact(text) == "GET http://***@db.example:5984/users failed"
    assert "s3cret" not in redact(text)


def test_database_url_drops_credentials():
    db = Database("http://admin:s3cret@127.0.0.1:5984/users/")
    assert db.url == "http://127.0.0.1:5984/users"


def test_database_url_without_db_is_rejected():
    with pytest.raises(ValueError, match="names no database"):
        Database("http://admin:s3cret@127.0.0.1:5984/")


def test_doc_path_encodes_special_characters():
    assert doc_path("a/b&c+d e") == "a%2Fb%26c%2Bd%20e"
    assert doc_path("_design/app") == "_design/app"
    assert doc_path("ü") == "%C3%BC"


def test_open_revs_batches_fit_url_limit():
    db = Database("http://127.0.0.1:5984/users")
    revs = [f"{n}-{'f' * 32}" for n in range(1, 201)]
    batches = db.open_revs_batches("doc", revs)
    assert len(batches) > 1
    assert [rev for batch in batches for rev in batch] == revs


def test_backoff_doubles_with_jitter_and_cap():
    service = SyncService(
        open_store("memory"),
        "http://127.0.0.1:9/users",
        backoff_base=0.5,
        backoff_max=4.0,
    )
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = {service._backoff(attempt) for _ in range(50)}
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert len(delays) > 1
