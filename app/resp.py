"""A small pipelined Redis client for the request path (RESP2 over asyncio).

redis-py's asyncio client spends about 100 us of CPU per command (connection
pool, stream reader, pure-Python parser), which is more than the rest of a
lookup. Rate limiting needs one command per request (EVALSHA), so this client
keeps one connection, writes each command at once and matches replies to
waiting futures in order, because Redis replies in order on a connection. Commands
from concurrent requests therefore share the connection without a pool.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

URL_FORMS = (
    "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or "
    "unix://[[USER]:PASSWORD@]/PATH[?db=DB]"
)


class RedisError(Exception):
    """Redis returned an error reply (`-ERR ...`)."""


class RedisUnavailable(ConnectionError):
    """The connection to Redis failed, closed or timed out."""


def encode_command(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, int):
            arg = str(arg).encode()
        elif isinstance(arg, str):
            arg = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class _Incomplete(Exception):
    pass


def _parse(buffer: bytes, start: int) -> tuple[object, int]:
    """Parse one reply at `start`; return it and the offset after it."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        raise _Incomplete
    kind = buffer[start : start + 1]
    line = buffer[start + 1 : end]
    after = end + 2
    if kind == b":":
        return int(line), after
    if kind == b"+":
        return line, after
    if kind == b"-":
        return RedisError(line.decode(errors="replace")), after
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            raise _Incomplete
        return buffer[after : after + length], after + length + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            # Integers, the rate-limit script's whole reply, without recursion.
            if buffer[after : after + 1] == b":":
                end = buffer.find(b"\r\n", after)
                if end < 0:
                    raise _Incomplete
                items.append(int(buffer[after + 1 : end]))
                after = end + 2
                continue
            item, after = _parse(buffer, after)
            items.append(item)
        return items, after
    raise RedisUnavailable(f"unexpected reply type {kind!r} from Redis")


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float, address: str) -> None:
        self.timeout = timeout
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        # When each waiting command was sent (loop time), in the same order.
        self.sent_at: collections.deque[float] = collections.deque()
        self.buffer = b""
        self.closed = False
        self.outgoing: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, command: bytes) -> asyncio.Future:
        """Queue a command; return the future of its reply.

        All commands queued in one pass of the event loop go out in one
        write, so Redis reads them at once and replies in one write. For many
        concurrent requests that costs far less than a write and a read each.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.outgoing:
            loop.call_soon(self._flush)
        self.outgoing.append(command)
        self.waiting.append(future)
        self.sent_at.append(loop.time())
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check_timeout)
        return future

    def _check_timeout(self) -> None:
        # One timer per connection, not one per command: replies come in
        # order, so only the oldest waiting command can be overdue first.
        self._watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        age = loop.time() - self.sent_at[0]
        if age < self.timeout:
            self._watchdog = loop.call_later(self.timeout - age, self._check_timeout)
            return
        self._fail(
            RedisUnavailable(
                f"Redis at {self.address} did not reply within {self.timeout} s"
            )
        )
        # A late reply would be matched to the wrong command.
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        offset = 0
        try:
            while offset < len(buffer):
                reply, offset = _parse(buffer, offset)
                future = self.waiting.popleft()
                self.sent_at.popleft()
                if not future.done():
                    future.set_result(reply)
        except _Incomplete:
            pass
        except (RedisUnavailable, ValueError, IndexError) as error:
            self._fail(RedisUnavailable(f"cannot parse the Redis reply: {error}"))
            if self.transport is not None:
                self.transport.close()
            return
        self.buffer = buffer[offset:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None:
            # asyncio passes None after an end of file from the server, or
            # after this side closed the transport (and failed its commands).
            reason = (
                f"Redis at {self.address} closed the connection (it was stopped, "
                "restarted, or dropped this client, for example for its timeout "
                "or maxclients setting)"
            )
        else:
            reason = f"the connection to Redis at {self.address} failed: {exc}"
        self._fail(RedisUnavailable(reason))

    def _fail(self, error: Exception) -> None:
        self.sent_at.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


@dataclass(frozen=True)
class RedisAddress:
    """A Redis server address (TCP host and port, or Unix socket) and credentials."""

    host: str = "127.0.0.1"
    port: int = 6379
    socket_path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    def __str__(self) -> str:
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        return f"{self.host}:{self.port}"


def redact_url(url: str) -> str:
    """Return `url` with its password, in the user part or in ?password=, as ***."""
    parts = urlsplit(url)
    if parts.password is None and "password=" not in parts.query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user_part, _, host_part = netloc.rpartition("@")
        user = user_part.partition(":")[0]
        netloc = f"{user}:***@{host_part}"
    query = "&".join(
        "password=***" if item.startswith("password=") else item
        for item in parts.query.split("&")
    )
    # Built by hand because geturl() drops the empty host of unix:///PATH.
    scheme = f"{parts.scheme}:" if parts.scheme else ""
    return f"{scheme}//{netloc}{parts.path}?{query}".removesuffix("?")


def parse_redis_url(url: str) -> RedisAddress:
    """Parse a Redis URL in one of URL_FORMS; raise ValueError naming the problem.

    The messages never contain the password.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password else None
    if password is None and "password" in query:
        password = query["password"][-1] or None
    credentials = {
        "username": unquote(parts.username) if parts.username else None,
        "password": password,
    }
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("the unix:// URL has no socket path")
        db_text = query.get("db", ["0"])[-1]
        return RedisAddress(
            socket_path=unquote(parts.path), db=_db_number(db_text), **credentials
        )
    if parts.scheme == "rediss":
        raise ValueError("TLS (rediss://) is not supported")
    if parts.scheme not in ("redis", ""):
        raise ValueError(f"the scheme {parts.scheme!r} is not supported")
    if parts.scheme == "" and not url.startswith("//"):
        raise ValueError("the URL has no scheme")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    db_text = query.get("db", [parts.path.strip("/") or "0"])[-1]
    return RedisAddress(
        host=parts.hostname or "127.0.0.1",
        port=port,
        db=_db_number(db_text),
        **credentials,
    )


def _db_number(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the database number {text[:16]!r} is not an integer >= 0")
    return int(text)


class RespClient:
    """One pipelined connection to Redis, opened on first use and reopened."""

    def __init__(self, url: str, timeout: float = 0.25) -> None:
        try:
            self.address = parse_redis_url(url)
        except ValueError as error:
            raise ValueError(
                f"invalid Redis URL {redact_url(url)!r}: {error}; use {URL_FORMS}"
            ) from None
        self.password = self.address.password
        self.username = self.address.username
        self.db = self.address.db
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        address = self.address

        def protocol_factory() -> _Protocol:
            return _Protocol(self.timeout, str(address))

        if address.socket_path is not None:
            opening = loop.create_unix_connection(protocol_factory, address.socket_path)
        else:
            opening = loop.create_connection(
                protocol_factory, address.host, address.port
            )
        _, protocol = await asyncio.wait_for(opening, self.timeout)
        setup = []
        if self.password is not None:
            if self.username:
                setup.append(("AUTH", self.username, self.password))
            else:
                setup.append(("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        for command in setup:
            reply = await protocol.send(encode_command(*command))
            if isinstance(reply, RedisError):
                protocol.transport.close()
                raise RedisUnavailable(f"Redis rejected {command[0]}: {reply}")
        return protocol

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            protocol = await asyncio.shield(connecting)
        except (TimeoutError, OSError) as error:
            raise RedisUnavailable(
                f"cannot connect to Redis at {self.address}: "
                f"{error or type(error).__name__}"
            ) from None
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._protocol = protocol
        return protocol

    async def execute(self, *command: bytes | str | int) -> object:
        """Send one command; return the reply or a RedisError (not raised)."""
        return await self.execute_encoded(encode_command(*command))

    def execute_encoded(self, command: bytes) -> Awaitable[object]:
        """Send one command already encoded as RESP (see encode_command).

        Returns an awaitable of the reply: on an open connection the reply's
        future itself, which saves a coroutine per command on the request path.
        """
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol.send(command)
        return self._connect_and_send(command)

    async def _connect_and_send(self, command: bytes) -> object:
        protocol = await self._connection()
        return await protocol.send(command)

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
