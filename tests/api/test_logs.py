"""Log lines: key=value events, the per-request fast path, batching."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from app import logs

TIME = re.compile(r"^time=\S+ ")


@pytest.fixture
def app_stream() -> Iterator[tuple[logs.BatchingStreamHandler, io.StringIO]]:
    """Leave only configure()'s handler on the `app` logger, writing to a string.

    pytest attaches its capture handlers to every logger; they would route
    request lines through logging.Logger.info instead of the fast path.
    """
    logs.configure()
    logger = logging.getLogger("app")
    saved = list(logger.handlers)
    handler = next(h for h in saved if isinstance(h, logs.BatchingStreamHandler))
    stream = io.StringIO()
    previous = handler.setStream(stream)
    logger.handlers = [handler]
    try:
        yield handler, stream
    finally:
        handler.flush()
        handler.setStream(previous)
        logger.handlers = saved


def test_request_line_matches_formatter(app_stream):
    handler, stream = app_stream
    logs.RequestLog().info("event=request status=200 user=u1")
    logging.getLogger("app.request").info("%s", "event=request status=200 user=u1")
    handler.flush()
    fast, slow = stream.getvalue().splitlines()
    assert TIME.match(fast)
    assert TIME.sub("", fast) == TIME.sub("", slow)
    assert " logger=app.request event=request status=200 user=u1" in fast


def test_info_lines_wait_for_flush(app_stream):
    handler, stream = app_stream
    logging.getLogger("app").info("event=test_pending")
    logs.RequestLog().info("event=request status=200")
    assert stream.getvalue() == ""
    handler.flush()
    assert "event=test_pending" in stream.getvalue()
    assert "event=request status=200" in stream.getvalue()


def test_errors_written_at_once(app_stream):
    _, stream = app_stream
    logging.getLogger("app").info("event=before")
    logging.getLogger("app").error("event=failed error=%r", "boom")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "event=before" in lines[0]
    assert "level=ERROR" in lines[1]


def test_request_log_respects_level(app_stream):
    handler, stream = app_stream
    logger = logging.getLogger("app.request")
    logger.setLevel(logging.WARNING)
    try:
        logs.RequestLog().info("event=request status=200")
        handler.flush()
    finally:
        logger.setLevel(logging.NOTSET)
    assert stream.getvalue() == ""
