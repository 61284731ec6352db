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
from urllib.parse import unquote, urlsplit


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
        self._fail(RedisUnavailable(f"the connection to Redis closed: {exc}"))

    def _fail(self, error: Exception) -> None:
        self.sent_at.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class RespClient:
    """One pipelined connection to Redis, opened on first use and reopened."""

    def __init__(self, url: str, timeout: float = 0.25) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", ""):
            raise ValueError(
                f"unsupported REDIS_URL scheme {parts.scheme!r}; use redis://HOST:PORT/DB"
            )
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.password = unquote(parts.password) if parts.password else None
        self.username = unquote(parts.username) if parts.username else None
        path = parts.path.strip("/")
        self.db = int(path) if path else 0
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Protocol(self.timeout, f"{self.host}:{self.port}"),
                self.host,
                self.port,
            ),
            self.timeout,
        )
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
                f"cannot connect to Redis at {self.host}:{self.port}: "
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
