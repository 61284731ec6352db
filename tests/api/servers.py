"""Real servers for the API tests and the benchmark: redis-server and uvicorn.

Each runs on a free loopback port, is waited for with a deadline, and is
stopped (and waited for) on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@contextlib.contextmanager
def redis_server(
    timeout: float = 10,
    prefix: tuple[str, ...] = (),
    port: int | None = None,
    unix_socket: Path | None = None,
) -> Iterator[str]:
    """Run redis-server on a free loopback port; yield its redis:// URL.

    `prefix` goes before the command, such as ("taskset", "-c", "1").
    With `unix_socket`, Redis also listens on that socket path.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; run scripts/setup")
    port = port or free_port()
    process = subprocess.Popen(
        [
            *prefix,
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            *(
                ("--unixsocket", str(unix_socket), "--unixsocketperm", "700")
                if unix_socket
                else ()
            ),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)


class Uvicorn:
    """A uvicorn process serving an ASGI app on a loopback port."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def uvicorn_server(
    app: str,
    env: dict[str, str],
    log_path: Path,
    *,
    workers: int = 1,
    ready_path: str = "/healthz",
    timeout: float = 30,
    prefix: tuple[str, ...] = (),
) -> Iterator[Uvicorn]:
    """Serve `app` ("module:attr") the way the Procfile does, with `workers`.

    `prefix` goes before the command, such as ("taskset", "-c", "0").
    """
    port = free_port()
    argv = [
        *prefix,
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-proxy-headers",
        "--no-access-log",
    ]
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            argv, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = Uvicorn(process, port, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = httpx.get(server.url + ready_path, timeout=1)
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"uvicorn did not serve {ready_path} within {timeout} s:\n"
                    + server.log()[-3000:]
                )
            time.sleep(0.1)
        yield server
    finally:
        _stop(process, timeout=15)


POUCHDB_SERVER = REPO / "tests" / "peers" / "node_modules" / ".bin" / "pouchdb-server"


@contextlib.contextmanager
def pouchdb_server(workdir: Path, timeout: float = 30) -> Iterator[str]:
    """Run an in-memory PouchDB Server (a CouchDB peer); yield its base URL."""
    if not POUCHDB_SERVER.exists():
        raise RuntimeError(
            f"{POUCHDB_SERVER} is missing; run `npm install` in tests/peers "
            "(scripts/setup does)"
        )
    port = free_port()
    argv = [
        str(POUCHDB_SERVER),
        "-p",
        str(port),
        "-o",
        "127.0.0.1",
        "-n",
        "--in-memory",
        "-c",
        str(workdir / "pouchdb-config.json"),
    ]
    process = subprocess.Popen(
        argv, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pouchdb-server did not answer on {url}")
            time.sleep(0.1)
        yield url
    finally:
        _stop(process)
