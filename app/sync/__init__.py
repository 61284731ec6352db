"""The sync layer: a local replica of the primary CouchDB database.

`open_store(spec)` opens the replica ("memory" or "sqlite:PATH") and
`SyncService(store, couchdb_url)` keeps it in step with the primary over the
CouchDB replication protocol. See docs/sync.md.
"""

from app.sync.client import AuthError, CouchError, redact
from app.sync.service import SyncService
from app.sync.store import Conflict, InvalidDocument, MemoryStore, Store, open_store

__all__ = [
    "AuthError",
    "Conflict",
    "CouchError",
    "InvalidDocument",
    "MemoryStore",
    "Store",
    "SyncService",
    "open_store",
    "redact",
]
