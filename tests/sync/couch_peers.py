"""Start and drive the npm peers (PouchDB Server, PouchDB) for sync tests.

Used by the tests in this folder and by bench/sync_bench.py. Every server
binds to 127.0.0.1 on a free port and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

PEERS_DIR = Path(__file__).resolve().parents[1] / "peers"
POUCHDB_SERVER = PEERS_DIR / "node_modules" / ".bin" / "pouchdb-server"
REPLICATE_JS = PEERS_DIR / "replicate.js"


def peers_missing() -> str | None:
    """Return why the npm peers cannot run, or None when they can."""
    if not POUCHDB_SERVER.exists():
        return f"{POUCHDB_SERVER} not found: run scripts/setup (npm install)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PouchServer:
    """A pouchdb-server process on 127.0.0.1, in memory or on a data dir."""

    def __init__(self, data_dir: Path | None = None, port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix="pouchdb-server-")
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, db: str) -> str:
        return f"{self.base_url}/{db}"

    def start(self, timeout: float = 30.0) -> PouchServer:
        workdir = Path(self._workdir.name)
        argv = [
            str(POUCHDB_SERVER),
            "-p",
            str(self.port),
            "-o",
            "127.0.0.1",
            "-n",
            "-c",
            str(workdir / "config.json"),
        ]
        if self.data_dir is None:
            argv.append("--in-memory")
        else:
            argv += ["-d", str(self.data_dir)]
        self.process = subprocess.Popen(
            argv,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace")
                raise RuntimeError(f"pouchdb-server exited at start: {error[-2000:]}")
            try:
                httpx.get(self.base_url, timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"pouchdb-server did not answer on {self.base_url}")

    def kill(self) -> None:
        """Kill the server at once, as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.process and self.process.stderr:
            self.process.stderr.close()

    def close(self) -> None:
        self.stop()
        self._workdir.cleanup()

    # -- seeding over HTTP

    def create_db(self, db: str) -> None:
        response = httpx.put(self.url(db), timeout=10)
        if response.status_code not in (201, 412):
            response.raise_for_status()

    def bulk_docs(
        self, db: str, docs: list[dict[str, Any]], new_edits: bool = True
    ) -> list[dict[str, Any]]:
        response = httpx.post(
            f"{self.url(db)}/_bulk_docs",
            json={"docs": docs, "new_edits": new_edits},
            timeout=120,
        )
        response.raise_for_status()
        return response.json()

    def get(self, db: str, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url(db)}/{path}", params=params, timeout=60)
        response.raise_for_status()
        return response.json()


def pouchdb_replicate(url: str, dump: bool = True, timeout: float = 300) -> dict:
    """Run PouchDB (Node, memory adapter) replicating `url`; return its JSON."""
    argv = ["node", str(REPLICATE_JS), url]
    if not dump:
        argv.append("--no-dump")
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"replicate.js failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def user_docs(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Build `count` user documents shaped like the API's."""
    return [
        {
            "_id": f"user:{number:08d}",
            "type": "user",
            "email": f"user{number}@example.test",
            "plan": ("free", "pro", "business")[number % 3],
            "created": "2026-01-01T00:00:00Z",
        }
        for number in range(start, start + count)
    ]


def run(coro, timeout: float = 60.0):
    """Run a coroutine with a deadline, so no test can hang."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
