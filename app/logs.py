"""Logging for the API: one key=value line per event on stderr."""

from __future__ import annotations

import logging
import os
import sys
import time


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


def configure() -> None:
    """Send the `app` loggers to stderr once; LOG_LEVEL sets the level."""
    logger = logging.getLogger("app")
    if getattr(logger, "_vat_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    formatter = _KeyValueFormatter()
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    logger.propagate = False
    logger._vat_configured = True  # type: ignore[attr-defined]
