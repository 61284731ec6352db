"""Replication against real peers: PouchDB Server as the primary, PouchDB
itself (Node, memory adapter) as the reference replicator.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
from couch_peers import PouchServer, free_port, pouchdb_replicate, run, user_docs

from app.sync import MemoryStore, SyncService, open_store
from app.sync.client import MAX_URL_BYTES, Database, NotFound, TransientError
from app.sync.replicator import PushReplication, Stats

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

SPECIAL_IDS = ["a/b", "x&y=1", "p+q", "with space", "ünïcødé-日本", "a/b c+&d/ü"]


# -- helpers


def server_view(server: PouchServer, db: str) -> dict[str, dict]:
    """Winner, deleted flag and sorted conflicts of every doc on the server."""
    feed = server.get(
        db, "_changes", style="all_docs", include_docs="true", conflicts="true"
    )
    return {
        row["id"]: {
            "winner": row["doc"]["_rev"],
            "deleted": bool(row["doc"].get("_deleted")),
            "conflicts": sorted(row["doc"].get("_conflicts", [])),
        }
        for row in feed["results"]
    }


def store_view(store) -> dict[str, dict]:
    view = {}
    for doc_id in store.doc_ids():
        tree = store.tree(doc_id)
        winner = tree.winner()
        view[doc_id] = {
            "winner": winner,
            "deleted": tree.is_deleted(winner),
            "conflicts": sorted(tree.conflicts()),
        }
    return view


async def pull_ready(store, url: str, timeout: float = 60, **options) -> SyncService:
    options.setdefault("heartbeat_ms", 500)
    options.setdefault("push", False)
    service = SyncService(store, url, **options)
    await service.start()
    ready = await service.wait_ready(timeout)
    assert ready, f"not ready: {service.progress()}"
    return service


async def pull_once(store, url: str, **options) -> dict:
    service = await pull_ready(store, url, **options)
    progress = service.progress()
    await service.stop()
    return progress


class RecordingTransport(httpx.AsyncBaseTransport):
    """Forwards to the real server and records every request.

    `delay` (seconds) is added before each request, to stretch a pull.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []
        self.delay = delay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def conflicting_leaves(doc_id: str, count: int) -> list[dict]:
    """`count` first-generation revisions of one doc, all leaves (conflicts)."""
    return [
        {"_id": doc_id, "_rev": f"1-{number:032x}", "leaf": number}
        for number in range(count)
    ]


def wait_for(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


async def async_wait_for(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.05)


# -- first pull


def test_empty_replica_ready_with_every_user(pouch_server, db_name):
    pouch_server.bulk_docs(db_name, user_docs(3_000))
    store = open_store("memory")
    progress = run(pull_once(store, pouch_server.url(db_name)))
    assert progress["ready"] is True
    assert store.doc_count == 3_000
    assert progress["docs_read"] == 3_000
    assert progress["last_error"] is None
    assert store.get("user:00002999")["email"] == "user2999@example.test"
    assert store_view(store) == server_view(pouch_server, db_name)


@pytest.mark.parametrize("leaves", [2, 200])
@pytest.mark.parametrize("path", ["fast", "bulk_get", "open_revs"])
def test_conflicting_leaves_match_server(pouch_server, db_name, leaves, path):
    pouch_server.bulk_docs(db_name, user_docs(50))
    pouch_server.bulk_docs(
        db_name, conflicting_leaves("user:conflicted", leaves), new_edits=False
    )
    store = open_store("memory")
    if path != "fast":
        # A non-empty store takes the normal path: _revs_diff then fetch.
        store.bulk_docs([{"_id": "seed", "_rev": "1-seed"}])
    transport = RecordingTransport()
    run(
        pull_once(
            store,
            pouch_server.url(db_name),
            use_bulk_get=path != "open_revs",
            transport=transport,
        )
    )
    expected = server_view(pouch_server, db_name)
    assert len(store.leaves("user:conflicted")) == leaves
    assert store_view(store)["user:conflicted"] == expected["user:conflicted"]
    doc = store.get("user:conflicted", conflicts=True)
    assert len(doc["_conflicts"]) == leaves - 1
    urls = [str(request.url) for request in transport.requests]
    if path == "open_revs":
        fetches = [url for url in urls if "open_revs" in url]
        assert fetches, "expected open_revs requests"
        assert max(len(url) for url in fetches) <= MAX_URL_BYTES
        if leaves == 200:
            assert len(fetches) > 1
    else:
        assert not any("open_revs" in url for url in urls)


@pytest.mark.slow
def test_pouchdb_agrees_on_winners_and_conflicts(pouch_server, db_name):
    url = pouch_server.url(db_name)
    pouch_server.bulk_docs(db_name, user_docs(200))
    pouch_server.bulk_docs(db_name, conflicting_leaves("two", 2), new_edits=False)
    pouch_server.bulk_docs(db_name, conflicting_leaves("many", 200), new_edits=False)
    # A conflict whose losing branch is deleted, and a deleted winner.
    pouch_server.bulk_docs(
        db_name,
        [
            {"_id": "mixed", "_rev": "1-a", "v": 1},
            {"_id": "mixed", "_revisions": {"start": 2, "ids": ["b", "a"]}, "v": 2},
            {"_id": "mixed", "_revisions": {"start": 3, "ids": ["c", "b", "a"]}},
            {"_id": "mixed", "_revisions": {"start": 2, "ids": ["d", "a"]}, "v": 3},
            {
                "_id": "mixed",
                "_revisions": {"start": 3, "ids": ["e", "d", "a"]},
                "_deleted": True,
            },
            {"_id": "gone", "_rev": "1-a"},
            {
                "_id": "gone",
                "_revisions": {"start": 2, "ids": ["b", "a"]},
                "_deleted": True,
            },
            {"_id": "gone", "_rev": "1-z", "_deleted": True},
        ],
        new_edits=False,
    )
    pouch_server.bulk_docs(db_name, [{"_id": i, "v": i} for i in SPECIAL_IDS])

    fast = open_store("memory")
    run(pull_once(fast, url))
    normal = open_store("memory")
    normal.bulk_docs([{"_id": "seed", "_rev": "1-seed"}])
    run(pull_once(normal, url))

    reference = pouchdb_replicate(url)["docs"]
    assert store_view(fast) == reference
    normal_view = store_view(normal)
    normal_view.pop("seed")
    assert normal_view == reference
    assert reference["mixed"]["winner"] == "3-c"
    assert reference["gone"]["deleted"] is True


# -- revision histories


def test_delete_then_recreate_follows_primary(pouch_server, db_name):
    url = pouch_server.url(db_name)
    store = open_store("memory")

    async def scenario():
        service = await pull_ready(store, url)
        doc_url = f"{url}/user%3A1"
        async with httpx.AsyncClient(timeout=10) as primary:
            response = await primary.put(doc_url, json={"plan": "free"})
            rev = response.json()["rev"]
            await async_wait_for(
                lambda: store.get("user:1"), 10, "create not replicated"
            )
            response = await primary.delete(doc_url, params={"rev": rev})
            deleted = response.json()["rev"]
            await async_wait_for(
                lambda: store.get("user:1") is None, 10, "delete not replicated"
            )
            response = await primary.put(doc_url, json={"plan": "pro"})
            again = response.json()["rev"]
            await async_wait_for(
                lambda: store.get("user:1") is not None, 10, "undelete not replicated"
            )
        await service.stop()
        return rev, deleted, again

    rev, deleted, again = run(scenario())
    doc = store.get("user:1", revs=True)
    assert doc["_rev"] == again
    assert again.startswith("3-")
    assert doc["plan"] == "pro"
    assert doc["_revisions"]["ids"] == [r.split("-")[1] for r in (again, deleted, rev)]
    assert store_view(store) == server_view(pouch_server, db_name)


@pytest.mark.parametrize("use_bulk_get", [True, False])
def test_special_ids_round_trip(pouch_server, db_name, use_bulk_get):
    url = pouch_server.url(db_name)
    docs = []
    for doc_id in SPECIAL_IDS:
        docs += [{**doc, "_id": doc_id} for doc in conflicting_leaves(doc_id, 3)]
    pouch_server.bulk_docs(db_name, docs, new_edits=False)
    store = open_store("memory")
    store.bulk_docs([{"_id": "seed", "_rev": "1-seed"}])

    async def scenario():
        service = await pull_ready(store, url, use_bulk_get=use_bulk_get, push=True)
        rev = store.put({"_id": "ü/local & more+", "v": 1})
        await service.push_now(20)
        await service.stop()
        return rev

    rev = run(scenario())
    view = store_view(store)
    expected = server_view(pouch_server, db_name)
    for doc_id in SPECIAL_IDS:
        assert view[doc_id] == expected[doc_id], doc_id
    pushed = pouch_server.get(db_name, "%C3%BC%2Flocal%20%26%20more%2B")
    assert pushed["_rev"] == rev


@pytest.mark.slow
def test_long_history_of_5000_revisions(pouch_server, db_name):
    url = pouch_server.url(db_name)
    ids = [hashlib.md5(str(n).encode()).hexdigest() for n in range(5_000, 0, -1)]
    pouch_server.bulk_docs(
        db_name,
        [{"_id": "long", "_revisions": {"start": 5_000, "ids": ids}, "v": 5_000}],
        new_edits=False,
    )
    on_server = pouch_server.get(db_name, "long", revs="true")["_revisions"]

    normal = open_store("memory")
    normal.bulk_docs([{"_id": "seed", "_rev": "1-seed"}])
    run(pull_once(normal, url))
    assert normal.get("long", revs=True)["_revisions"] == on_server

    # The fast path stores the leaf alone; a later branch from an old
    # generation must still become a conflict that PouchDB agrees with.
    fast = open_store("memory")
    run(pull_once(fast, url))
    assert fast.get("long")["_rev"] == f"5000-{ids[0]}"
    branch = {
        "_id": "long",
        "_revisions": {"start": 4_001, "ids": ["f" * 32, *ids[1000:1003]]},
    }
    pouch_server.bulk_docs(db_name, [branch], new_edits=False)
    pouch_server.bulk_docs(
        db_name,
        [
            {
                "_id": "long",
                "_revisions": {"start": 5_001, "ids": ["e" * 32, ids[0], ids[1]]},
            }
        ],
        new_edits=False,
    )
    run(
        pull_once(
            fast,
            url,
        )
    )
    reference = pouchdb_replicate(url)["docs"]["long"]
    assert store_view(fast)["long"] == reference
    assert reference["conflicts"] == [f"4001-{'f' * 32}"]
    assert fast.tree("long").ancestry(f"5001-{'e' * 32}")[:2] == [
        f"5001-{'e' * 32}",
        f"5000-{ids[0]}",
    ]


# -- checkpoints and restarts


def test_restart_resumes_without_rereading(pouch_server, db_name, tmp_path):
    url = pouch_server.url(db_name)
    spec = f"sqlite:{tmp_path}/replica.db"
    pouch_server.bulk_docs(db_name, user_docs(500))
    first = open_store(spec)
    assert run(pull_once(first, url))["docs_read"] == 500
    first.close()

    pouch_server.bulk_docs(db_name, user_docs(10, start=500))
    again = open_store(spec)
    progress = run(pull_once(again, url))
    assert progress["docs_read"] == 10
    assert again.doc_count == 510
    assert store_view(again) == server_view(pouch_server, db_name)
    again.close()


def test_wiped_memory_replica_ignores_stale_checkpoint(pouch_server, db_name):
    url = pouch_server.url(db_name)
    pouch_server.bulk_docs(db_name, user_docs(300))
    first = MemoryStore(replica_id="region-a")
    run(pull_once(first, url))
    checkpoint_ids = [
        doc_id for doc_id in first._local if doc_id != "_local/vatfleet-replica"
    ]
    assert len(checkpoint_ids) == 1
    remote_checkpoint = pouch_server.get(db_name, checkpoint_ids[0])
    assert remote_checkpoint["source_last_seq"] == 300

    # Same replica id, so the same replication id: the primary still stores
    # a checkpoint at seq 300, but the empty store has none.
    pouch_server.bulk_docs(db_name, user_docs(5, start=300))
    wiped = MemoryStore(replica_id="region-a")
    progress = run(pull_once(wiped, url))
    assert wiped.get_local(checkpoint_ids[0]) is not None
    assert progress["docs_read"] == 305
    assert wiped.doc_count == 305


@pytest.mark.slow
def test_primary_dies_mid_pull_and_returns(tmp_path):
    data_dir = tmp_path / "primary"
    data_dir.mkdir()
    port = free_port()
    server = PouchServer(data_dir=data_dir, port=port).start()
    try:
        server.create_db("users")
        for start in range(0, 10_000, 5_000):
            server.bulk_docs("users", user_docs(5_000, start=start))
        store = open_store("memory")

        async def scenario():
            service = SyncService(
                store,
                server.url("users"),
                push=False,
                batch_size=200,
                fast_batch_size=500,
                backoff_base=0.2,
                backoff_max=1.0,
                heartbeat_ms=500,
                # At least 20 pages of 500 docs, 50 ms each: a pull of 1 s
                # or more, so the kill below lands in its middle.
                transport=RecordingTransport(delay=0.05),
            )
            await service.start()
            await async_wait_for(
                lambda: service.stats.docs_read >= 1_000, 30, "pull never started"
            )
            server.kill()
            read_at_kill = service.stats.docs_read
            assert not service.ready
            await async_wait_for(
                lambda: service.last_error is not None, 20, "outage not reported"
            )
            error_during_outage = service.last_error
            server.start()
            assert await service.wait_ready(60), service.progress()
            progress = service.progress()
            await service.stop()
            return read_at_kill, error_during_outage, progress

        read_at_kill, error, progress = run(scenario(), timeout=120)
        assert read_at_kill < 10_000
        assert "127.0.0.1" in error
        assert progress["ready"] is True
        assert progress["last_error"] is None
        assert store.doc_count == 10_000
        assert store_view(store) == server_view(server, "users")
    finally:
        server.close()


# -- opaque sequences


class OpaqueSeqTransport(RecordingTransport):
    """A proxy that turns integer sequences into CouchDB 3 style strings.

    Every seq the client sees is like "12-g1AAAA...", and the `since` it
    sends back is mapped to the integer the server understands. A `since`
    that is not one of those strings (other than 0) fails the request.
    """

    def __init__(self) -> None:
        super().__init__()
        self.to_int: dict[str, int] = {}
        self.sinces: list[str] = []

    def opaque(self, seq: int) -> str:
        tag = hashlib.sha1(str(seq).encode()).hexdigest()[:24]
        value = f"{seq}-g1AAAAB{tag}"
        self.to_int[value] = seq
        return value

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/_changes"):
            params = dict(parse_qsl(request.url.query.decode()))
            since = params.get("since", "0")
            self.sinces.append(since)
            if since != "0":
                if since not in self.to_int:
                    return httpx.Response(
                        400, json={"error": "bad since", "reason": since}
                    )
                params["since"] = str(self.to_int[since])
            request = httpx.Request(
                request.method,
                request.url.copy_with(params=params),
                headers=request.headers,
            )
        response = await super().handle_async_request(request)
        if not request.url.path.endswith("/_changes"):
            return response
        body = orjson.loads(await response.aread())
        for row in body.get("results", []):
            row["seq"] = self.opaque(row["seq"])
        body["last_seq"] = self.opaque(body["last_seq"])
        return httpx.Response(response.status_code, content=orjson.dumps(body))


def test_opaque_string_sequences(pouch_server, db_name, tmp_path):
    url = pouch_server.url(db_name)
    spec = f"sqlite:{tmp_path}/replica.db"
    pouch_server.bulk_docs(db_name, user_docs(1_200))
    transport = OpaqueSeqTransport()
    store = open_store(spec)

    async def follow():
        service = await pull_ready(store, url, batch_size=500, transport=transport)
        pouch_server.bulk_docs(db_name, user_docs(3, start=1_200))
        await async_wait_for(
            lambda: store.doc_count == 1_203, 15, "continuous pull missed docs"
        )
        progress = service.progress()
        await service.stop()
        return progress

    progress = run(follow())
    assert isinstance(progress["last_seq"], str)
    assert progress["last_seq"].endswith(tuple(transport.to_int)[-1][-8:])
    assert all(s == "0" or s in transport.to_int for s in transport.sinces)
    store.close()

    # A restart resumes from the opaque checkpoint.
    pouch_server.bulk_docs(db_name, user_docs(2, start=1_203))
    again = open_store(spec)
    transport.sinces.clear()
    progress = run(pull_once(again, url, transport=transport))
    assert transport.sinces[0] in transport.to_int
    assert progress["docs_read"] == 2
    assert again.doc_count == 1_205
    again.close()


# -- push and outages


@pytest.mark.slow
def test_outage_writes_from_two_replicas_reach_primary(tmp_path):
    data_dir = tmp_path / "primary"
    data_dir.mkdir()
    server = PouchServer(data_dir=data_dir).start()
    try:
        server.create_db("users")
        server.bulk_docs("users", user_docs(100))
        url = server.url("users")
        west, east = open_store("memory"), open_store(f"sqlite:{tmp_path}/east.db")

        async def scenario():
            options = {
                "push": True,
                "push_interval": 0.2,
                "backoff_base": 0.2,
                "backoff_max": 1.0,
            }
            services = [await pull_ready(s, url, **options) for s in (west, east)]
            server.kill()
            shared = {}
            for name, store in (("west", west), ("east", east)):
                for number in range(25):
                    store.put({"_id": f"usage:{number}:{name}:2026-12-04", "n": number})
                doc = store.get("user:00000007")
                doc["plan"] = f"{name}-plan"
                shared[name] = store.put(doc)
            await async_wait_for(
                lambda: all(s.progress()["pending_push"] > 0 for s in services),
                10,
                "pending_push not counted",
            )
            await asyncio.sleep(0.5)
            for service in services:
                progress = service.progress()
                assert progress["lag_seconds"] >= 0.5
                assert progress["last_error"] is not None
            server.start()
            for service in services:
                await service.push_now(60)
            # The pushed edits come back through each longpoll, which proves
            # the pull recovered too.
            await async_wait_for(
                lambda: all(s.last_error is None for s in services),
                20,
                "errors not cleared after the primary returned",
            )
            for service in services:
                await service.stop()
            return shared

        shared = run(scenario(), timeout=150)
        ids = {row["id"] for row in server.get("users", "_all_docs")["rows"]}
        for name in ("west", "east"):
            for number in range(25):
                assert f"usage:{number}:{name}:2026-12-04" in ids
        doc = server.get("users", "user:00000007", conflicts="true")
        assert {doc["_rev"], *doc["_conflicts"]} == set(shared.values())
    finally:
        server.close()
        east.close()


# -- errors and credentials


def test_bad_credentials_are_fatal_and_redacted(pouch_server, db_name, caplog):
    caplog.set_level(logging.DEBUG)
    url = pouch_server.url(db_name).replace("http://", "http://admin:s3cret-pw@")
    store = open_store("memory")

    async def scenario():
        service = SyncService(store, url, heartbeat_ms=500)
        await service.start()
        ready = await service.wait_ready(20)
        progress = service.progress()
        await service.stop()
        return ready, progress

    ready, progress = run(scenario())
    assert ready is False
    assert progress["ready"] is False
    assert "401" in progress["last_error"]
    assert "s3cret-pw" not in progress["last_error"]
    assert "s3cret-pw" not in caplog.text
    assert "event=sync_pull_failed" in caplog.text


def test_credentials_never_logged(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = PouchServer().start()
    try:
        httpx.put(
            f"{server.base_url}/_config/admins/admin", json="s3cret-pw", timeout=10
        )
        auth = ("admin", "s3cret-pw")
        httpx.put(server.url("users"), auth=auth, timeout=10).raise_for_status()
        httpx.post(
            server.url("users") + "/_bulk_docs",
            json={"docs": user_docs(20)},
            auth=auth,
            timeout=10,
        ).raise_for_status()
        url = server.url("users").replace("http://", "http://admin:s3cret-pw@")
        store = open_store("memory")

        async def scenario():
            service = await pull_ready(store, url, push=True)
            store.put({"_id": "apikey:abc", "type": "apikey"})
            await service.push_now(20)
            await service.stop()

        run(scenario())
        assert store.doc_count == 21
        assert "s3cret-pw" not in caplog.text
        assert "admin:" not in caplog.text
        assert "event=sync_pull_ready" in caplog.text
    finally:
        server.close()


def test_push_creates_missing_target(pouch_server):
    url = pouch_server.url("created-by-push")
    store = open_store("memory")
    rev = store.put({"_id": "user:1", "plan": "pro"})

    async def scenario():
        remote = Database(url)
        try:
            push = PushReplication(remote, store, Stats(), create_target=True)
            await push.prepare()
            return await push.push_pending()
        finally:
            await remote.aclose()

    assert run(scenario()) == 1
    assert pouch_server.get("created-by-push", "user%3A1")["_rev"] == rev


def test_push_without_create_target_reports_missing_db(pouch_server):
    store = open_store("memory")

    async def scenario():
        remote = Database(pouch_server.url("never-created"))
        try:
            await PushReplication(remote, store, Stats()).prepare()
        finally:
            await remote.aclose()

    with pytest.raises(NotFound, match="never-created"):
        run(scenario())


class CorruptingTransport(httpx.AsyncBaseTransport):
    """Forwards to the real server but replaces the first `count` responses
    to paths containing `marker` with `body` (status 200)."""

    def __init__(self, marker: str, body: bytes, count: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.marker = marker
        self.body = body
        self.remaining = count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.remaining > 0 and self.marker in request.url.path:
            self.remaining -= 1
            return httpx.Response(200, content=self.body, request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize(("marker", "body", "expected"), [
    ("_changes", b"<html>proxy error</html>", "is not JSON"),
    ("_changes", b'{"results": [{"seq": 1, "id"', "is not JSON"),
    ("_changes", b'{"results": 5, "last_seq": 1}', "not a list of change rows"),
    ("_changes", b"[1, 2, 3]", "returned JSON an array"),
    ("_changes", b"null", "returned JSON null"),
    ("_local", b'"a string"', "returned JSON a string"),
])
def test_garbage_from_primary_is_retried(pouch_server, db_name, marker, body, expected):
    pouch_server.bulk_docs(db_name, user_docs(20))
    transport = CorruptingTransport(marker, body, count=2)
    store = open_store("memory")

    async def scenario():
        service = SyncService(
            store, pouch_server.url(db_name), push=False, backoff_base=0.05,
            backoff_max=0.2, heartbeat_ms=500, transport=transport,
        )
        await service.start()
        await async_wait_for(
            lambda: service.last_error is not None, 20, "garbage not reported"
        )
        error = service.last_error
        ready = await service.wait_ready(30)
        progress = service.progress()
        await service.stop()
        return error, ready, progress

    error, ready, progress = run(scenario(), timeout=60)
    assert error.startswith("BadResponse: ")
    assert expected in error
    assert ready, progress
    assert progress["failed"] is False
    assert len(store_view(store)) == 20


class RejectingTransport(httpx.AsyncBaseTransport):
    """Forwards to the real server but answers the first `count` requests
    with 401, as a server does while its admin settings are still loading."""

    def __init__(self, count: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.remaining = count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.remaining > 0:
            self.remaining -= 1
            body = b'{"error":"unauthorized","reason":"Name or password is incorrect."}'
            return httpx.Response(401, content=body, request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_brief_auth_rejection_recovers(pouch_server, db_name, caplog):
    caplog.set_level(logging.INFO)
    pouch_server.bulk_docs(db_name, user_docs(10))
    store = open_store("memory")

    async def scenario():
        service = SyncService(
            store, pouch_server.url(db_name), backoff_base=0.05, backoff_max=0.5,
            heartbeat_ms=500, transport=RejectingTransport(count=2),
        )
        await service.start()
        await async_wait_for(lambda: service.failed, 10, "401 not reported")
        during = service.progress()
        await async_wait_for(lambda: service.ready, 20, "never recovered")
        await async_wait_for(lambda: not service.failed, 10, "failed never cleared")
        after = service.progress()
        await service.stop()
        return during, after

    during, after = run(scenario(), timeout=60)
    assert "401" in during["last_error"]
    assert during["failed"] is True
    assert after["ready"] is True
    assert after["failed"] is False
    assert after["last_error"] is None
    assert len(store_view(store)) == 10
    assert "event=sync_pull_auth_recovered" in caplog.text


def test_too_deep_doc_skipped_not_stalling(pouch_server, db_name, caplog):
    caplog.set_level(logging.INFO)
    pouch_server.bulk_docs(db_name, user_docs(5))
    store = open_store("memory")
    depth = 1500
    deep = (
        '{"_id": "user:deep", "type": "user", "n": '
        + '{"n": ' * depth + "1" + "}" * depth + "}"
    )

    async def scenario():
        service = await pull_ready(store, pouch_server.url(db_name), backoff_max=0.5)
        body = (
            '{"docs": [' + deep + ', {"_id": "user:after", "type": "user"}]}'
        ).encode()
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                pouch_server.url(db_name) + "/_bulk_docs", content=body,
                headers={"Content-Type": "application/json"},
            )
        assert response.status_code == 201, response.text
        await async_wait_for(
            lambda: store.get("user:after") is not None, 20, "pull stalled"
        )
        await service.stop()

    run(scenario(), timeout=60)
    assert store.get("user:deep") is None
    assert "event=sync_pull_doc_skipped doc_id='user:deep'" in caplog.text


def test_too_deep_doc_first_pull_ready(pouch_server, db_name, caplog):
    caplog.set_level(logging.INFO)
    depth = 1500
    deep = (
        '{"_id": "user:deep", "type": "user", "n": '
        + '{"n": ' * depth + "1" + "}" * depth + "}"
    )
    body = ('{"docs": [' + deep + ', {"_id": "user:after", "type": "user"}]}').encode()
    response = httpx.post(
        pouch_server.url(db_name) + "/_bulk_docs", content=body,
        headers={"Content-Type": "application/json"}, timeout=30,
    )
    assert response.status_code == 201, response.text
    pouch_server.bulk_docs(db_name, user_docs(5))
    store = open_store("memory")

    progress = run(pull_once(store, pouch_server.url(db_name), backoff_max=0.5))
    assert progress["ready"] is True
    assert store.get("user:after") is not None
    assert store.get("user:deep") is None
    assert len(store_view(store)) == 6
    assert "event=sync_pull_fast_path_abandoned" in caplog.text


class TricklingTransport(httpx.AsyncBaseTransport):
    """Answers every request with a body that sends one space per 0.2 s."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        class Trickle(httpx.AsyncByteStream):
            async def __aiter__(self):
                for _ in range(200):
                    yield b" "
                    await asyncio.sleep(0.2)
                yield b"{}"

        return httpx.Response(200, stream=Trickle(), request=request)


def test_trickling_server_times_out():
    database = Database(
        "http://127.0.0.1:9/users", timeout=0.5, transport=TricklingTransport()
    )

    async def scenario():
        started = time.monotonic()
        try:
            with pytest.raises(TransientError) as caught:
                await database.info()
        finally:
            await database.aclose()
        return caught.value, time.monotonic() - started

    error, seconds = run(scenario(), timeout=30)
    assert "timed out" in str(error)
    assert "in total" in str(error)
    assert seconds < 10
