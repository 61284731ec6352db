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


class _KeyValueFormatter(logging.Formatter):
    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        # strftime once per second: the request path logs every request.
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        time_text = self._second_text
        line = (
            f"time={time_text}.{int(record.msecs):03d}Z level={record.levelname} "
            f"pid={record.process} logger={record.name} {record.getMessage()}"
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


def flush() -> None:
    """Write pending lines now; for process exits that skip atexit handlers."""
    for handler in logging.getLogger("app").handlers:
        handler.flush()
