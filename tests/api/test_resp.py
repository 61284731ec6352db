"""The pipelined Redis client: parsing, pipelining, timeouts, real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis

from app.resp import (
    RedisAddress,
    RedisError,
    RedisUnavailable,
    RespClient,
    _Incomplete,
    _parse,
    _Protocol,
    encode_command,
    parse_redis_url,
    redact_url,
)

from .servers import free_port, redis_server


def test_encode_command_bulk_strings():
    assert encode_command("GET", "k", 7) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n7\r\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b":42\r\n", 42),
        (b"+OK\r\n", b"OK"),
        (b"$3\r\nabc\r\n", b"abc"),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*4\r\n:1\r\n:2\r\n:0\r\n:123\r\n", [1, 2, 0, 123]),
        (b"*2\r\n$1\r\nx\r\n*1\r\n:5\r\n", [b"x", [5]]),
    ],
)
def test_parse_reply_types(data, expected):
    value, offset = _parse(data, 0)
    assert value == expected
    assert offset == len(data)


def test_parse_error_reply():
    value, _ = _parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(value, RedisError)
    assert str(value).startswith("NOSCRIPT")


@pytest.mark.parametrize(
    "data", [b":4", b"$3\r\nab", b"*2\r\n:1\r\n", b"*2\r\n:1\r\n:2"]
)
def test_parse_incomplete_reply(data):
    with pytest.raises(_Incomplete):
        _parse(data, 0)


def test_replies_split_across_reads():
    async def scenario():
        protocol = _Protocol(timeout=5, address="test")
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        protocol.waiting.extend([first, second])
        protocol.sent_at.extend([loop.time(), loop.time()])
        reply = b"*4\r\n:1\r\n:9\r\n:0\r\n:5000\r\n$2\r\nok\r\n"
        for index in range(len(reply)):
            protocol.data_received(reply[index : index + 1])
        return first.result(), second.result()

    assert asyncio.run(scenario()) == ([1, 9, 0, 5000], b"ok")


@pytest.mark.redis
def test_concurrent_commands_share_connection():
    async def scenario(url):
        client = RespClient(url)
        replies = await asyncio.gather(
            *(client.execute("ECHO", f"m{index}") for index in range(200))
        )
        await client.close()
        return replies

    with redis_server() as url:
        replies = asyncio.run(scenario(url))
    assert replies == [f"m{index}".encode() for index in range(200)]


def test_silent_server_times_out():
    async def scenario():
        async def accept(reader, writer):
            await asyncio.sleep(5)
            writer.close()

        port = free_port()
        server = await asyncio.start_server(accept, "127.0.0.1", port)
        client = RespClient(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RedisUnavailable, match="did not reply within 0.2 s"):
            await client.execute("PING")
        elapsed = loop.time() - started
        await client.close()
        server.close()
        return elapsed

    assert asyncio.run(scenario()) < 1.0


def test_closed_port_is_unavailable():
    async def scenario():
        client = RespClient(f"redis://127.0.0.1:{free_port()}/0", timeout=1)
        with pytest.raises(RedisUnavailable, match="cannot connect to Redis"):
            await client.execute("PING")

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6390/2", RedisAddress(port=6390, db=2)),
        ("redis://:pw@example.test", RedisAddress("example.test", password="pw")),
        (
            "redis://u:p%40ss@h/0?db=3",
            RedisAddress("h", username="u", password="p@ss", db=3),
        ),
        ("unix:///run/redis.sock", RedisAddress(socket_path="/run/redis.sock")),
        (
            "unix://:pw@/run/redis.sock?db=4",
            RedisAddress(socket_path="/run/redis.sock", password="pw", db=4),
        ),
        (
            "unix:///run/redis.sock?password=s%25cret",
            RedisAddress(socket_path="/run/redis.sock", password="s%cret"),
        ),
    ],
)
def test_parse_redis_url_forms(url, expected):
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("rediss://h:6379/0", "TLS"),
        ("http://h:6379/0", "scheme 'http'"),
        ("127.0.0.1:6379", "no scheme"),
        ("unix://", "no socket path"),
        ("redis://h:99999/0", "port"),
        ("redis://h/zero", "database number 'zero'"),
        ("unix:///run/redis.sock?db=-1", "database number '-1'"),
    ],
)
def test_parse_redis_url_rejects(url, problem):
    with pytest.raises(ValueError, match=problem):
        parse_redis_url(url)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://u:hunter2@h:1/0", "redis://u:***@h:1/0"),
        ("unix://:hunter2@/run/r.sock", "unix://:***@/run/r.sock"),
        (
            "unix:///run/r.sock?db=1&password=hunter2",
            "unix:///run/r.sock?db=1&password=***",
        ),
        ("redis://h:1/0", "redis://h:1/0"),
    ],
)
def test_redact_url_hides_password(url, redacted):
    assert redact_url(url) == redacted


def test_client_error_names_url_without_password():
    with pytest.raises(ValueError) as raised:
        RespClient("rediss://u:hunter2@h/0")
    message = str(raised.value)
    assert "rediss://u:***@h/0" in message
    assert "hunter2" not in message
    assert "unix://" in message


@pytest.mark.redis
def test_unix_socket_with_db(tmp_path):
    socket_path = tmp_path / "redis.sock"

    async def scenario():
        client = RespClient(f"unix://{socket_path}?db=3")
        await client.execute("SET", "over-unix", "yes")
        reply = await client.execute("GET", "over-unix")
        await client.close()
        return reply

    with redis_server(unix_socket=socket_path) as url:
        assert asyncio.run(scenario()) == b"yes"
        database_3 = redis.Redis.from_url(url.removesuffix("/0") + "/3")
        assert database_3.get("over-unix") == b"yes"
        assert redis.Redis.from_url(url).get("over-unix") is None


def test_missing_unix_socket_is_unavailable(tmp_path):
    async def scenario():
        client = RespClient(f"unix://{tmp_path}/absent.sock", timeout=1)
        with pytest.raises(RedisUnavailable, match="cannot connect to Redis at unix:"):
            await client.execute("PING")

    asyncio.run(scenario())


def test_server_closing_connection_is_named():
    async def scenario():
        async def accept(reader, writer):
            await reader.read(100)
            writer.close()

        port = free_port()
        server = await asyncio.start_server(accept, "127.0.0.1", port)
        client = RespClient(f"redis://127.0.0.1:{port}/0", timeout=2)
        with pytest.raises(RedisUnavailable) as raised:
            await client.execute("PING")
        await client.close()
        server.close()
        return str(raised.value)

    message = asyncio.run(scenario())
    assert message.startswith("Redis at 127.0.0.1:")
    assert "closed the connection" in message
    assert "None" not in message
