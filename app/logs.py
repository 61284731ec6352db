"""Logging for the API: one key=value line per event on stderr, in batches."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

# Seconds an INFO line may wait in memory before it is written.
FLUSH_INTERVAL = 0.2
# Lines that trigger a write at once.
MAX_PENDING_LINES = 256


_second = -1
_second_text = ""
# The process id for request lines, refreshed in forked children.
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def _timestamp(created: float) -> str:
    """Format a time.time() value as UTC with milliseconds, e.g. ...T10:00:00.123Z."""
    global _second, _second_text
    second = int(created)
    if second != _second:
        # strftime once per second: the request path logs every request.
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    return f"{_second_text}.{int((created - second) * 1000):03d}Z"


def _line(created: float, level: str, pid: int, logger: str, message: str) -> str:
    return (
        f"time={_timestamp(created)} level={level} pid={pid} logger={logger} {message}"
    )


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = _line(
            record.created,
            record.levelname,
            record.process,
            record.name,
            record.getMessage(),
        )
        if record.exc_info:
            line += " traceback=" + repr(self.formatException(record.exc_info))
        return line


class BatchingStreamHandler(logging.StreamHandler):
    """A stream handler that writes INFO lines in batches.

    One write per request line costs a system call on the request path, so
    lines wait in memory until MAX_PENDING_LINES accumulate or a background
    thread flushes them, every FLUSH_INTERVAL seconds. WARNING and above are
    written at once, with whatever is pending before them. logging.shutdown()
    at exit flushes the rest; a killed process loses at most the lines of
    the last interval.
    """

    def __init__(self, stream=None, interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(stream)
        self.pending: list[str] = []
        self.interval = interval
        flusher = threading.Thread(
            target=self._flush_forever, name="log-flush", daemon=True
        )
        flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle() holds self.lock around emit().
        try:
            self.pending.append(self.format(record))
            if record.levelno >= logging.WARNING or (
                len(self.pending) >= MAX_PENDING_LINES
            ):
                self._write_pending()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def enqueue(self, line: str) -> None:
        """Queue a line formatted by the caller, as emit() does for a record."""
        with self.lock:
            self.pending.append(line)
            if len(self.pending) >= MAX_PENDING_LINES:
                self._write_pending()

    def _write_pending(self) -> None:
        if not self.pending:
            return
        data = "\n".join(self.pending) + "\n"
        self.pending.clear()
        self.stream.write(data)
        self.stream.flush()

    def flush(self) -> None:
        with self.lock:
            self._write_pending()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.flush()
            except (OSError, ValueError):
                # The stream is closed or broken; logging reports it on the
                # next emit.
                pass


def configure() -> None:
    """Send the `app` loggers to stderr once; LOG_LEVEL sets the level."""
    logger = logging.getLogger("app")
    if getattr(logger, "_vat_configured", False):
        return
    # The request path logs every request: skip the record fields this
    # format never shows, as the logging HOWTO's "Optimization" section
    # describes (caller frame lookup, thread and multiprocessing names).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = BatchingStreamHandler(sys.stderr)
    formatter = _KeyValueFormatter()
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    logger.propagate = False
    logger._vat_configured = True  # type: ignore[attr-defined]


class RequestLog:
    """Writes the one line per request, as `logger=app.request`.

    Building a LogRecord and formatting it costs about 15 us, a fifth of a
    lookup's CPU time (bench/api_bench.py with LOG_LEVEL=WARNING shows the
    difference). So while the `app` logger has only the handler that
    configure() installed, the line is formatted here, the same way
    _KeyValueFormatter would, and queued in that handler directly. With any
    other handler attached (tests, embedding applications), it goes through
    logging.Logger.info as usual.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger("app.request")
        self.parent = logging.getLogger("app")

    def info(self, message: str) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        handlers = self.parent.handlers
        handler = handlers[0] if len(handlers) == 1 else None
        if not isinstance(handler, BatchingStreamHandler) or self.logger.handlers:
            self.logger.info("%s", message)
            return
        line = _line(time.time(), "INFO", _pid, "app.request", message)
        handler.enqueue(line)


def flush() -> None:
    """Write pending lines now; for process exits that skip atexit handlers."""
    for handler in logging.getLogger("app").handlers:
        handler.flush()
