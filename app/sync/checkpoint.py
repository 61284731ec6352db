"""Replication ids and checkpoints, following CouchDB's replication protocol.

A checkpoint is a `_local/<replication id>` document written on both peers
after a batch is stored. On start the two documents are compared: the same
`session_id` means both were written together, so the source's sequence is
safe. Otherwise the newest session found in both `history` lists gives the
start; no shared session, or a missing document on either side, means
sequence 0. That last rule is what makes a wiped replica pull everything
again even though the primary still stores its old checkpoint.

Sources: docs.couchdb.org "Replication Protocol" (Find Common Ancestry,
Compare Replication Logs) and PouchDB 9's pouchdb-checkpointer.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

# Start of every replication without a usable checkpoint.
LOWEST_SEQ = 0

# Sessions kept in a checkpoint's history. PouchDB 9 keeps 5; more entries
# make a shared session likelier after checkpoint writes failed on one side.
HISTORY_SIZE = 50

REPLICATOR = "vatfleet"
VERSION = 1


def replication_id(
    replica_id: str, source: str, target: str, options: dict[str, Any]
) -> str:
    """Derive a replication id that stays the same across restarts.

    `replica_id` is persisted in the local store, and `source` and `target`
    are URLs without credentials, so changing a password keeps the id.
    """
    digest = hashlib.md5(usedforsecurity=False)
    for part in (replica_id, source, target):
        digest.update(part.encode())
        digest.update(b"\x00")
    digest.update(orjson.dumps(options, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def _seq_of(entry: dict[str, Any]) -> Any:
    # CouchDB writes recorded_seq/source_last_seq, PouchDB writes last_seq.
    for key in ("recorded_seq", "last_seq", "source_last_seq"):
        if key in entry:
            return entry[key]
    return LOWEST_SEQ


def _has_session(session_id: Any, history: list[dict[str, Any]]) -> bool:
    return bool(session_id) and any(
        entry.get("session_id") == session_id for entry in history
    )


def compare_histories(
    source: list[dict[str, Any]], target: list[dict[str, Any]]
) -> Any:
    """Return the sequence of the newest session present in both histories.

    Walks both lists in step, newest first: a source entry counts when its
    session appears in the rest of the target's list, and a target entry
    when its session appears in the rest of the source's list.
    """
    for depth in range(min(len(source), len(target))):
        entry = source[depth]
        if _has_session(entry.get("session_id"), target[depth:]):
            return _seq_of(entry)
        entry = target[depth]
        if _has_session(entry.get("session_id"), source[depth + 1 :]):
            return _seq_of(entry)
    return LOWEST_SEQ


def start_seq(
    source_doc: dict[str, Any] | None, target_doc: dict[str, Any] | None
) -> Any:
    """Return where a replication resumes, given both checkpoint documents."""
    if source_doc is None or target_doc is None:
        return LOWEST_SEQ
    session = source_doc.get("session_id")
    if session and session == target_doc.get("session_id"):
        return source_doc.get("source_last_seq", source_doc.get("last_seq", 0))
    return compare_histories(
        source_doc.get("history") or [], target_doc.get("history") or []
    )


def checkpoint_doc(
    previous: dict[str, Any] | None,
    session_id: str,
    seq: Any,
    session_started: float,
    stats: dict[str, int],
) -> dict[str, Any]:
    """Build the next checkpoint body from the previous one on the same side."""
    entry = {
        "session_id": session_id,
        "recorded_seq": seq,
        "last_seq": seq,
        "start_time": _http_date(session_started),
        "end_time": _http_date(time.time()),
        **stats,
    }
    older = [
        item
        for item in (previous or {}).get("history", [])
        if item.get("session_id") != session_id
    ]
    return {
        "session_id": session_id,
        "source_last_seq": seq,
        "last_seq": seq,
        "replicator": REPLICATOR,
        "version": VERSION,
        "history": [entry, *older][:HISTORY_SIZE],
    }


def _http_date(epoch: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(epoch))
